"""Session 41 review (second round): a loss waits for the attempt's other
exits (LOSS_HOLD, 5 s at most: `JobMaster._restart_unless_failed`). Where
the executor of such another process was stopped on purpose meanwhile
(SIGTERM: "leaving", its process stopped, "left"), its "left" moved the
job, no restart spent, and the loss heard before it was dropped: a job of
two processes at --max-restarts 0 whose process on the other executor was
SIGKILLed ran again (attempt 2, 0 restarts, `moved off executor e1, which
was stopped on purpose`), where it failed before the hold (`process 1 on
executor e2 was killed (exit -9); gave up after 0 restart(s)`). A move of
an attempt whose loss is held spends that loss's restart now.

A coordinator and the stopped executor of their own processes; the
executor whose process is killed served in this one (its report of the
exit awaited: the coordinator has heard it before the stop begins)."""

from __future__ import annotations

import asyncio
import os
import signal

from _system import System, executor_served_here, marking_pipeline, submitted_working_here, wait_until

from tests.system.test_session40_held_exit_coordinator_restart_review import ENDLESS, _job_process


def _pending_sigint(pid: int) -> bool:
    """Whether SIGINT waits on the (stopped) process group `pid`'s leader,
    or came and went: the executor's stop SIGKILLs it 3 s after its SIGINT,
    which a poll starved that long under load missed (its /proc gone: a
    FileNotFoundError that failed the test, twice beside a full CI run)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            pending = next(line for line in f if line.startswith("ShdPnd:")).split()[1]
    except FileNotFoundError:
        return True
    return bool(int(pending, 16) & (1 << (signal.SIGINT - 1)))


async def test_a_loss_held_when_the_peers_executor_is_stopped_spends_its_restart(tmp_path):
    marks, pipeline = marking_pipeline(tmp_path, ENDLESS)
    system = System(tmp_path)
    async with executor_served_here(system, tmp_path / "here", peers=1) as (executor, _, (stopped,)):
        job = await submitted_working_here(system, pipeline, marks)
        (killed,) = executor.processes.values()
        peer = await asyncio.to_thread(_job_process, stopped)
        os.killpg(peer, signal.SIGSTOP)  # (it says nothing of the loss: the hold goes on)
        try:
            os.killpg(killed.proc.pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.shield(killed.followed), 30)  # (its exit reported, heard)
            stopped.send_signal(signal.SIGTERM)
            await asyncio.to_thread(wait_until, lambda: _pending_sigint(peer), timeout=5,
                                    what="the stopped executor's SIGINT", every=0.01)
        finally:
            os.killpg(peer, signal.SIGCONT)

        def over() -> dict | None:
            state = system.job(job)
            return state if state["status"] != "running" or state["attempt"] > 1 else None

        state = await asyncio.to_thread(wait_until, over, what=f"{job} to end or move")
        assert (state["status"], state["attempt"], state["restarts"]) == ("failed", 1, 0), state
        assert state["message"] == (f"process {killed.process} on executor {executor.executor_id} was killed "
                                    "(exit -9); gave up after 0 restart(s)"), state
