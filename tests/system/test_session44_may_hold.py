"""Session 44: `JobMaster._may_hold` with a real coordinator: an earlier
attempt of our job listed by an executor that runs the job's current
attempt is stopped by its attempt, never held (the hold's confirm stops
every process of the job there, the current attempt's too). (The case
where it is held, no attempt of the job placed there:
test_session43_kill_connected_coordinator_restart.py, 'of before'.)

The executor is test_session44_catalog_per_process.py's, this test
speaking the executor's protocol over a real connection, so that it lists
both attempts running at once."""

from __future__ import annotations

import asyncio
import signal

from _system import System, wait_until
from test_session44_catalog_per_process import ScriptedExecutor, _job_1, _running_job_1

from tests.system.test_session43_kill_away_coordinator_restart import _unstopped


async def _a_catalog_write(system: System, tmp_path, job: str) -> None:
    """A submit (of `job`): written after every catalog write asked before it."""
    submitted = await asyncio.to_thread(system.cli, "submit", str(tmp_path / "noop.py"))
    assert submitted.stdout.split() == [job], submitted.stderr


def test_an_earlier_attempt_beside_the_current_one_is_stopped_by_its_attempt_not_held(tmp_path):
    """Our job-1's attempt 1 listed still running beside its attempt 2 on the
    same executor (a restart while the first one stopped, the coordinator
    restarted since): stopped by its attempt, never held (`_may_hold`): the
    hold's confirm stops every process of the job there, attempt 2 too."""
    system = System(tmp_path)

    async def scenario():
        executor, ours = await _running_job_1(system, tmp_path)
        # (its process lost: killed, not its own failure; the job runs again, there)
        await executor.session.request("exited", job="job-1", attempt=1, process=0, code=-9, error=None,
                                       dashboard=None, cut_off=False, catalog=ours)
        start = await executor.next_asked("start")
        assert (start["job"], start["attempt"]) == ("job-1", 2)
        await asyncio.to_thread(wait_until, lambda: _job_1(system) == ("running", 2, 1),
                                what="attempt 2 to run")
        await _a_catalog_write(system, tmp_path, "job-2")  # (after attempt 2's: running, in the catalog)
        system.coordinator.send_signal(signal.SIGKILL)
        system.coordinator.wait()
        await executor.close()
        await asyncio.to_thread(system.start_coordinator)
        back = ScriptedExecutor(system)
        running = {"code": None, "catalog": ours, "job": "job-1", "process": 0}
        await back.register(executor="e1", instance="second", catalog=ours,
                            processes=[{**running, "attempt": 1}, {**running, "attempt": 2}])
        stop = await back.next_asked("stop")
        assert (stop["job"], stop["attempt"]) == ("job-1", 1)  # (None: every attempt, held)
        await _a_catalog_write(system, tmp_path, "job-3")  # (after the register's, a hold's)
        assert _unstopped(tmp_path / "data", "job-1") == {}
        assert await asyncio.to_thread(_job_1, system) == ("running", 2, 1)
        asked = [back.asked.get_nowait() for _ in range(back.asked.qsize())]
        assert [m for op, m in asked if op == "stop"] == [], asked  # (no stop of every attempt)
        await back.close()

    system.run_with_coordinator(scenario)
