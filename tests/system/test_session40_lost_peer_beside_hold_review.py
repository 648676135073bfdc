"""Session 40 review (third round): a peer's exit held for a stopped
executor's "left" (`JobMaster.process_exited`) keeps the attempt running
for a while (STOP_TIMEOUT at most). The peer's executor lost meanwhile (no
heartbeat: a cut cable; its process had ended, its exit heard) was counted
a failure of the job's, `lost executor e2 (...)`, a restart spent: at
--max-restarts 0 the job failed at once, where the held exit moves it free
at the stopped executor's "left" (it did, at once, before the hold). An
executor lost whose every process of the attempt has exited, heard, loses
nothing of it.

In-process: a real catalog and master, two executors' sessions that
answer as executors do (the exits told as they would tell them)."""

from __future__ import annotations

import asyncio

from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from tests.system.test_session40_done_on_held_peer_review import first_attempt_ended, running_across


def test_a_peer_executor_lost_while_its_exit_is_held_spends_no_restart(tmp_path):
    async def scenario() -> tuple[dict, dict]:
        master = JobMaster(Catalog(tmp_path))
        job, placement = await running_across(master, 2)
        stopped, peer = placement
        master.executor_leaving(stopped)
        await master.process_exited(job, 1, 1, 1, "lost process 0 (its link closed)")  # (held)
        assert master.job_status(job)["status"] == "running"
        master.connected.pop(peer)
        await master.executor_lost(peer, "no heartbeat for 5 s")
        after_lost = dict(master.job_status(job))
        master.executor_left(stopped)
        state = await first_attempt_ended(master, job)
        await master.close()
        return after_lost, state

    after_lost, state = asyncio.run(scenario())
    assert after_lost["status"] == "running" and after_lost["restarts"] == 0, after_lost
    assert state["status"] != "failed" and state["restarts"] == 0, state
    assert "stopped on purpose" in state["message"], state
