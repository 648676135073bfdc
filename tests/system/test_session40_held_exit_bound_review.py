"""Session 40 review (second round): a peer's exit heard while an executor
is being stopped waits for that executor's "left" (or its loss at its
lease's end), which moves the job free (`JobMaster.process_exited`). An
executor whose stop does not end (a job process that SIGKILL does not end:
uninterruptible, in the kernel, on a hung file system or device) says no
"left", and beats on, never lost: the job, its peer dead, stayed `running`
for as long as that lasted (over 20 s here, for ever), where it moved at
once before the hold. It is held for STOP_TIMEOUT at most now (an
executor's stop takes a few seconds: SIGINT, 3 s, SIGKILL, its report),
then placed again, no restart spent (its next attempt waiting, as any,
until the executor has confirmed the process stopped, or is lost)

A coordinator and the peer's executor of their own processes; the stopped
executor in this one, its close() never ending (as over such a process),
the peer's job process killed once it has told the coordinator it leaves."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from _system import (
    System,
    descendants,
    executor_served_here,
    marking_pipeline,
    submitted_working_here,
    wait_until,
)

from kernel.system._master import STOP_TIMEOUT
from tests.system.test_session40_held_exit_coordinator_restart_review import ENDLESS, _leads

MARGIN = 10.0  # seconds past STOP_TIMEOUT by which the job must have moved


async def test_a_peers_exit_held_for_an_executor_whose_stop_never_ends_moves_the_job_after_a_bound(tmp_path):
    system = System(tmp_path)
    marks, pipeline = marking_pipeline(tmp_path, ENDLESS)
    stopping, release = asyncio.Event(), asyncio.Event()
    async with executor_served_here(system, tmp_path / "stopped", peers=1) as (executor, served, (peer,)):
        close = executor.close
        try:
            job = await submitted_working_here(system, pipeline, marks)

            async def never_ending() -> None:  # (its stop waits on a process that does not end)
                stopping.set()
                await release.wait()

            executor.close = never_ending
            served.cancel()  # (SIGTERM's doing: "leaving" told, then the stop)
            await asyncio.wait_for(stopping.wait(), 30)
            lost = next(p for p in descendants(peer.pid) if _leads(p))
            os.killpg(lost, signal.SIGKILL)
            held = time.monotonic()

            def moved() -> dict | None:
                state = system.job(job)
                over = state["status"] not in ("starting", "running") or state["attempt"] > 1
                return state if over else None

            state = await asyncio.to_thread(wait_until, moved, timeout=STOP_TIMEOUT + MARGIN,
                                            what=f"{job}'s attempt 1 to end, its peer dead")
            assert state["restarts"] == 0 and "stopped on purpose" in state["message"], state
            assert time.monotonic() - held >= STOP_TIMEOUT - 1, state  # (held meanwhile: its report may come)
        finally:
            release.set()
            executor.close = close
