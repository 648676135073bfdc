"""Session 41 review: a loss waits for the attempt's other exits
(`_restart_unless_failed`), and where every exit is a loss the job
restarts at the last one heard, with that one's words. Usually the cause
is heard first (process 1 killed, `exit -9`, its own executor telling at
once) and its peer's `lost process 1 (...)` last: the restart's message
became the peer's word, where it named the kill before the hold (the
first exit heard restarted the job). Held until LOSS_HOLD, the message
was the first exit's, a peer's word, where the kill had been heard since.
The message is now the first loss heard that is not a peer's word of it.

In-process: a real catalog and master, executors' sessions that answer as
executors do (the exits told as they would tell them); --max-restarts 0,
so the message is the job's last."""

from __future__ import annotations

import asyncio

from kernel.system import _master
from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from tests.system.test_session40_done_on_held_peer_review import first_attempt_ended, running_across

LOST = "lost process {} (127.0.0.1:7001): the connection broke before the run finished"


def ended_after(tmp_path, processes: int, exits: list[tuple[int, int, str | None]]) -> dict:
    """The job's state once attempt 1 of a job of `processes` processes is
    over, its exits `exits` (process, code, error) heard in that order."""
    async def scenario() -> dict:
        master = JobMaster(Catalog(tmp_path))
        job, _ = await running_across(master, processes)
        for process, code, error in exits:
            await master.process_exited(job, 1, process, code, error)
        state = await first_attempt_ended(master, job)
        await master.close()
        return state

    return asyncio.run(scenario())


def test_the_cause_heard_before_its_peers_loss_names_the_restart(tmp_path):
    state = ended_after(tmp_path, 2, [(1, -9, None),  # (the cause, heard first)
                                      (0, 1, LOST.format(1))])
    assert (state["status"], state["restarts"], state["message"]) == (
        "failed", 0, "process 1 on executor e2 was killed (exit -9); gave up after 0 restart(s)"), state


def test_a_hold_that_times_out_names_the_cause_heard_meanwhile(tmp_path, monkeypatch):
    monkeypatch.setattr(_master, "LOSS_HOLD", 0.2)
    state = ended_after(tmp_path, 3, [(0, 1, LOST.format(2)),  # (a peer's word, first)
                                      (2, -9, None)])  # (the cause; process 1's exit never heard)
    assert (state["status"], state["restarts"], state["message"]) == (
        "failed", 0, "process 2 on executor e3 was killed (exit -9); gave up after 0 restart(s)"), state


def test_a_hold_whose_attempt_was_restarted_meanwhile_ends_quietly(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(_master, "LOSS_HOLD", 0.2)

    async def scenario() -> dict:
        master = JobMaster(Catalog(tmp_path))
        job, placement = await running_across(master, 3)
        master.jobs[job].max_restarts = 1
        await master.process_exited(job, 1, 0, 1, LOST.format(2))  # (held)
        await master.process_exited(job, 1, 2, -9, None)  # (held: process 1's exit not heard)
        master.connected.pop(placement[1])
        await master.executor_lost(placement[1], "no heartbeat for 5 s")  # (restarted for it)
        master._not_before[job] = float("inf")  # (not placed again meanwhile: no room, say)
        holds = [t for t in master._tasks if t.get_coro().__name__ == "_restart_unless_failed"]
        assert len(holds) == 2
        await asyncio.wait(holds, timeout=_master.LOSS_HOLD * 20)  # (each finds the attempt over)
        state = dict(master.job_status(job))
        await master.close()
        return state

    state = asyncio.run(scenario())
    assert (state["status"], state["attempt"], state["restarts"]) == ("restarting", 1, 1), state
    assert state["message"] == "lost executor e2 (no heartbeat for 5 s)", state
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
