"""Session 40 review (third round): a peer's exit held for a stopped
executor's "left" (`JobMaster.process_exited`) keeps the attempt running
for a while (STOP_TIMEOUT at most). The peer's executor started again
meanwhile (a crash, a supervisor's restart: its register lists no such
process, its exit told already) was taken for one that lost the process
(`executor e2 no longer runs process 1 (it restarted)`), a failure, a
restart spent: at --max-restarts 0 the job failed at once, where the held
exit moves it free at the stopped executor's "left" (it did, at once,
before the hold). A process whose exit was heard is not lost again.

In-process: a real catalog and master, two executors' sessions that
answer as executors do (the exits told as they would tell them)."""

from __future__ import annotations

import asyncio

from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from tests.system.test_session40_done_on_held_peer_review import (
    AnsweringExecutor,
    first_attempt_ended,
    running_across,
)


def test_a_peer_executor_started_again_while_its_exit_is_held_spends_no_restart(tmp_path):
    async def scenario() -> tuple[dict, dict]:
        master = JobMaster(Catalog(tmp_path))
        job, placement = await running_across(master, 2)
        stopped, peer = placement
        master.executor_leaving(stopped)
        await master.process_exited(job, 1, 1, 1, "lost process 0 (its link closed)")  # (held)
        assert master.job_status(job)["status"] == "running"
        # the peer's executor started again: its register lists nothing (the exit was told)
        master.register(AnsweringExecutor(peer, 7100), {"executor": peer, "cores": 1, "host": "127.0.0.1"})
        for _ in range(20):
            await asyncio.sleep(0.01)
        after_register = dict(master.job_status(job))
        master.executor_left(stopped)
        state = await first_attempt_ended(master, job)
        await master.close()
        return after_register, state

    after_register, state = asyncio.run(scenario())
    assert after_register["status"] == "running" and after_register["restarts"] == 0, after_register
    assert state["status"] != "failed" and state["restarts"] == 0, state
    assert "stopped on purpose" in state["message"], state
