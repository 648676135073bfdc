"""Session 44: an executor records which catalog each of its job processes
is of, and the coordinator judges each by its own. The register said one
catalog for the executor, the one it served last: a process of an earlier
catalog's job still running there (being stopped: up to STOP_GRACE, a
pipeline that ignores SIGINT) was listed, at a register after the executor
had taken the new catalog in, as the new catalog's, and the new catalog's
job of the same id and attempt (ids start again at job-1) adopted it; its
exit, reported, was taken for the new job's.

The executor here is this test speaking the executor's protocol over a
real connection to a real coordinator, so that it can list exactly such a
process, at once, as a real executor does only in a narrow window."""

from __future__ import annotations

import asyncio
import signal

from _system import SECRET, System
from test_system import NOOP, write

from kernel.system._wire import EXECUTOR, dial

OTHER_CATALOG = "0123456789abcdef"  # (an identity that is not the coordinator's own)


class ScriptedExecutor:
    """An executor as the coordinator sees it: it registers, answers every
    request (`start` as started), and keeps what it was asked."""

    def __init__(self, system: System) -> None:
        self.system = system
        self.asked: asyncio.Queue = asyncio.Queue()

    async def _answer(self, op: str, m: dict):
        self.asked.put_nowait((op, m))
        return {"pid": 1, "dashboard": None} if op == "start" else {}

    async def register(self, **fields) -> dict:
        self.session, self.http = await dial((self.system.host, self.system.port), SECRET.encode(), EXECUTOR,
                                             self._answer)
        self.reader = asyncio.ensure_future(self.session.run())
        return await self.session.request("register", host="127.0.0.1", cores=1, **fields)

    async def next_asked(self, op: str) -> dict:
        while True:
            asked, m = await asyncio.wait_for(self.asked.get(), 15)
            if asked == op:
                return m

    async def close(self) -> None:
        await self.session.close()
        await self.http.close()
        await asyncio.wait([self.reader], timeout=5)


async def _running_job_1(system: System, tmp_path) -> tuple[ScriptedExecutor, str]:
    """job-1 running on the scripted executor (attempt 1): it and the
    coordinator's catalog identity."""
    executor = ScriptedExecutor(system)
    reply = await executor.register(executor=None, instance="first", catalog=None, processes=[])
    submitted = await asyncio.to_thread(system.cli, "submit", str(write(tmp_path / "noop.py", NOOP)))
    assert submitted.stdout.split() == ["job-1"], submitted.stderr
    start = await executor.next_asked("start")
    assert (start["job"], start["attempt"], start["process"]) == ("job-1", 1, 0)
    return executor, reply["catalog"]


def _job_1(system: System) -> tuple:
    job = system.job("job-1")
    return job["status"], job["attempt"], job["restarts"]


def test_a_listed_process_of_another_catalog_is_stopped_not_adopted_as_this_ones(tmp_path):
    system = System(tmp_path)

    async def scenario():
        executor, ours = await _running_job_1(system, tmp_path)
        assert ours and ours != OTHER_CATALOG
        system.coordinator.send_signal(signal.SIGKILL)
        system.coordinator.wait()
        await executor.close()
        await asyncio.to_thread(system.start_coordinator)  # (the same catalog: job-1 running on e1)
        # The executor has taken this catalog in (its register says it), and still runs
        # the other catalog's job-1 attempt 1 process 0, being stopped.
        back = ScriptedExecutor(system)
        await back.register(executor="e1", instance="second", catalog=ours, processes=[
            {"job": "job-1", "attempt": 1, "process": 0, "code": None, "catalog": OTHER_CATALOG}])
        stop = await back.next_asked("stop")
        assert (stop["job"], stop["attempt"]) == ("job-1", 1)
        start = await back.next_asked("start")  # (this catalog's job-1 ran nowhere: run again)
        assert (start["job"], start["attempt"]) == ("job-1", 2)
        await back.close()

    system.run_with_coordinator(scenario)


def test_the_exit_of_another_catalogs_process_is_not_taken_for_this_ones(tmp_path):
    system = System(tmp_path)

    async def scenario():
        executor, ours = await _running_job_1(system, tmp_path)
        assert await asyncio.to_thread(_job_1, system) == ("running", 1, 0)
        # (the other catalog's job-1 attempt 1 process 0, killed at the end of its stop)
        await executor.session.request("exited", job="job-1", attempt=1, process=0, code=-9, error=None,
                                       dashboard=None, cut_off=False, catalog=OTHER_CATALOG)
        # (heard after the exit: an exit taken for job-1's restarted it, attempt 2)
        await executor.session.request("heartbeat")
        assert await asyncio.to_thread(_job_1, system) == ("running", 1, 0)
        assert executor.asked.empty(), executor.asked
        await executor.session.request("exited", job="job-1", attempt=1, process=0, code=0, error=None,
                                       dashboard=None, cut_off=False, catalog=ours)
        await executor.session.request("heartbeat")
        assert (await asyncio.to_thread(_job_1, system))[0] == "completed"
        await executor.close()

    system.run_with_coordinator(scenario)
