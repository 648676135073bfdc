"""Session 40 review (third round): `_done_on` asks every exit of the
attempt (a peer's exit held for a stopped executor's "left" is not done:
`JobMaster.process_exited`). It asked so for every executor lost, not only
the one being stopped: an executor lost (no heartbeat: a cut cable, a
crash) whose part of the job had completed (exit 0), as a peer's exit was
held for another's stop, restarted the job as a failure, a restart spent
(at --max-restarts 0 it failed: `lost executor e2 (...); gave up after 0
restart(s)`), where losing it lost nothing and the held exit moves the job
free at that stop's "left" (as it did before the clause).

In-process: a real catalog and master, three executors' sessions that
answer as executors do (the exits told as they would tell them)."""

from __future__ import annotations

import asyncio

from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from tests.system.test_session40_done_on_held_peer_review import first_attempt_ended, running_across


def test_an_executor_lost_whose_part_is_done_beside_a_held_exit_spends_no_restart(tmp_path):
    async def scenario() -> dict:
        master = JobMaster(Catalog(tmp_path))
        job, placement = await running_across(master, 3)
        stopped, done = placement[:2]
        master.executor_leaving(stopped)
        await master.process_exited(job, 1, 1, 0, None)  # (its part completed)
        await master.process_exited(job, 1, 2, 1, "lost process 0 (its link closed)")  # (held)
        assert master.job_status(job)["status"] == "running"
        master.connected.pop(done)
        await master.executor_lost(done, "no heartbeat for 5 s")
        after_lost = dict(master.job_status(job))
        master.executor_left(stopped)
        state = await first_attempt_ended(master, job)
        await master.close()
        return after_lost, state

    after_lost, state = asyncio.run(scenario())
    assert after_lost["status"] == "running" and after_lost["restarts"] == 0, after_lost
    assert state["status"] != "failed" and state["restarts"] == 0, state
    assert "stopped on purpose" in state["message"], state
