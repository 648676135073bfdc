"""Session 40 review: a job of two processes on two executors, one of
which is being stopped (SIGTERM) as its process fails on its own (a user
function raised). The peer on the other executor ends at once, `lost
process N`, and its exit reaches the coordinator while the stopped executor
is still leaving, before that one tells its own process's failure
(`_report_own_exits`, before "left"). The peer's exit was taken for the
stop's doing at once: the job moved free, and the failure, told next, was
of an attempt over, dropped: the job ran again, its error lost, no restart
spent. A peer's exit beside an executor still leaving now waits for its
"left" (or its loss), which moves the job if its own did not fail it.

A coordinator and the peer's executor of their own processes; the stopped
executor in this one, its close() held until its process has failed and
the peer's exit has been told."""

from __future__ import annotations

import asyncio
import re

from _system import System, executor_served_here, submitted_working_here, wait_until

from tests.system.test_session39_exits_while_away_review import _ended

# endless, both processes at work (`marks/RUN-PID`); raises once {flag} exists, in
# the process of the executor whose workdir is {stopped!r} (the name kept: `failing`)
FAILING_THERE = """\
import os
import time
from kernel import Dataflow

def step(n):
    if os.getcwd().startswith({failing!r}) and os.path.exists({flag!r}):
        raise RuntimeError("told to fail")
    path = os.path.join({marks!r}, os.environ["KERNEL_RUN"] + "-" + str(os.getpid()))
    if not os.path.exists(path):
        open(path, "w").close()
    time.sleep(0.01)
    return n

flow = Dataflow("failing-there")
flow.from_iterable(range(10**9), batch_size=10).key_by(lambda n: n % 16).map_values(step).sink(id)
"""


async def _decided(system: System, job: str) -> dict:
    """The job's state once attempt 1 is over (failed, or moved: attempt 2)."""
    def decided() -> dict | None:
        state = system.job(job)
        return state if state["status"] not in ("starting", "running") or state["attempt"] > 1 else None

    return await asyncio.to_thread(wait_until, decided, what=f"{job}'s attempt 1 to end")


async def _failed_as_its_executor_is_stopped(tmp_path, failing_there: bool) -> dict:
    """A job of two processes, one on an executor of its own process, one on
    an executor in this one: once that one has told the coordinator it is
    leaving, the process on the executor `failing_there` (the stopped one,
    or its peer's) raises, the other ends with `lost process N`, and the
    peer's exit is told before the stopped executor goes on to stop its
    processes (both have ended by then) and to tell its own exit: the job's
    state once attempt 1 is over."""
    system = System(tmp_path)
    flag, marks, workdir = tmp_path / "flag", tmp_path / "marks", tmp_path / "stopped"
    marks.mkdir()
    pipeline = tmp_path / "pipeline.py"
    failing = workdir if failing_there else tmp_path / "executor1"
    pipeline.write_text(FAILING_THERE.format(failing=str(failing), flag=str(flag), marks=str(marks)))
    async with executor_served_here(system, workdir, peers=1) as (executor, served, _):
        job = await submitted_working_here(system, pipeline, marks)
        (entry,) = executor.processes.values()
        peer_log = tmp_path / "executor1.log"
        close = executor.close

        async def failing_then_close() -> None:  # ("leaving" told: the process fails as the stop begins)
            flag.touch()
            await asyncio.to_thread(_ended, entry.proc.pid)
            # (the peer's exit told to the coordinator meanwhile)
            await asyncio.to_thread(wait_until, lambda: f"{job} attempt 1 process {1 - entry.process} exited"
                                    in peer_log.read_text(), what="the peer's exit")
            await asyncio.sleep(0.2)
            executor.close = close
            await close()

        executor.close = failing_then_close
        served.cancel()  # (SIGTERM's doing)
        await asyncio.gather(served, return_exceptions=True)
        await executor.close()
        return await _decided(system, job)


async def test_a_peers_lost_process_told_while_the_executor_leaves_does_not_hide_its_failure(tmp_path):
    state = await _failed_as_its_executor_is_stopped(tmp_path, failing_there=True)
    assert (state["status"], state["attempt"], state["restarts"]) == ("failed", 1, 0), state
    assert re.search(r"function 'step' raised RuntimeError: told to fail", state["message"]), state


async def test_a_peers_failure_told_while_the_executor_leaves_fails_the_job(tmp_path):
    """The peer's own failure, heard while the executor leaves: moved free at
    once before; held now, and the stopped executor's process, which ended on
    its own with `process 1 ... failed: <the error>`, told as its own, fails
    the job with it."""
    state = await _failed_as_its_executor_is_stopped(tmp_path, failing_there=False)
    assert (state["status"], state["attempt"], state["restarts"]) == ("failed", 1, 0), state
    assert re.search(r"function 'step' raised RuntimeError: told to fail", state["message"]), state
