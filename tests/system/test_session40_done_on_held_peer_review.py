"""Session 40 review (second round): an executor being stopped whose own
process of a job completed (exit 0) as the stop began, while the job's
peer on another executor ended (`lost process 0`), held for the stopped
executor's "left" (`JobMaster.process_exited`). At "left" its part of the
job is done (`_done_on`: each of its processes exited 0), and losing it
loses nothing; but the peer's exit, held, is not done: the job is moved
then, no restart spent (`_done_on` asks every exit of the attempt). Taken
for done, the job, its peer dead, was moved by nothing: `running` until
the hold's bound (STOP_TIMEOUT), for good before it.

In-process: a real catalog and master, two executors' sessions that
answer as executors do (the exits told as they would tell them)."""

from __future__ import annotations

import asyncio
import time

from kernel.system import _master
from kernel.system._catalog import Catalog
from kernel.system._master import STOP_TIMEOUT, JobMaster

MOVED_WITHIN = 2.0  # seconds after "left" (far below STOP_TIMEOUT)


class AnsweringExecutor:
    """An executor's session that answers prepare, start and stop."""

    def __init__(self, name: str, port: int) -> None:
        self.name, self.port = f"executor {name}", port

    async def request(self, kind: str, **fields):
        if kind == "prepare":
            return {"port": self.port}
        if kind == "start":
            return {"pid": 1, "dashboard": None}
        return {}

    async def close(self) -> None:
        pass


async def running_across(master: JobMaster, executors: int) -> tuple[str, list[str]]:
    """A job of `executors` processes, one on each of as many executors
    (`AnsweringExecutor`) registered with `master`, at --max-restarts 0,
    running: its id and placement."""
    names = [f"e{n + 1}" for n in range(executors)]
    for n, name in enumerate(names):
        master.register(AnsweringExecutor(name, 7000 + n), {"executor": name, "cores": 1,
                                                            "host": "127.0.0.1"})
    job = (await master.submit(filename="p.py", content=b"", digest="d" * 64, flow="flow",
                               processes=executors, cores=1, executors=None, state_dir=None,
                               epoch_interval=None, max_restarts=0)).id
    while master.job_status(job)["status"] != "running":
        await master.wait_for_change(5)
    return job, master.job_status(job)["placement"]



async def first_attempt_ended(master: JobMaster, job: str) -> dict:
    """The job's state once its attempt 1 is over (no longer attempt 1
    running), waiting on `master`'s changes (LOSS_HOLD * 4 at a time)."""
    while (state := master.job_status(job))["attempt"] == 1 and state["status"] == "running":
        await master.wait_for_change(_master.LOSS_HOLD * 4)
    return dict(state)

def test_a_peers_exit_held_beside_a_stopped_executors_completed_process_moves_the_job_at_left(tmp_path):
    assert MOVED_WITHIN < STOP_TIMEOUT

    async def scenario() -> tuple[dict, float]:
        master = JobMaster(Catalog(tmp_path))
        job, placement = await running_across(master, 2)
        stopped = placement[0]
        mine, peer = placement.index(stopped), 1 - placement.index(stopped)
        master.executor_leaving(stopped)
        # its own process completed as the stop began (told as its own, before "left")
        await master.process_exited(job, 1, mine, 0, None, on_its_own=True)
        # the peer's, `lost process N`, held for "left"
        await master.process_exited(job, 1, peer, 1, f"lost process {mine} (its link closed)")
        assert master.job_status(job)["status"] == "running"
        master.executor_left(stopped)
        left = time.monotonic()
        while (state := master.job_status(job))["attempt"] == 1 and state["status"] == "running":
            await master.wait_for_change(MOVED_WITHIN)
            if time.monotonic() - left > MOVED_WITHIN:
                break
        await master.close()
        return state, time.monotonic() - left

    state, after = asyncio.run(scenario())
    assert not (state["status"] == "running" and state["attempt"] == 1), \
        f"{after:.1f} s after the stopped executor left, the job is still {state}"
    assert state["restarts"] == 0 and "stopped on purpose" in state["message"], state
