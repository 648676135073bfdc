"""Session 41 (review): an executor being stopped (it said "leaving")
lets its workdir's lock (`executor.lock`) go once it has said "left", not
before: a next executor on the workdir could come first. But a leave cut
short (a second SIGTERM, or Ctrl-C, while it stopped its job processes) let
it go at once, its job processes still stopping (SIGINT, SIGKILL 3 s
later), and the CLI's close() went on stopping them: a next executor
started on the workdir got the lock, registered under the workdir's id, and
the coordinator started their jobs again there, beside them (seen: the lock
free 0.01 s after the second SIGTERM, the first attempt's process alive; a
new executor registered as e1 and ran attempt 2 beside it for ~3 s). The
lock is now let go by that close(), once they have stopped.

A coordinator of its own process; the executor in this one, its job
process stopped (SIGSTOP: the leave's stop waits out its grace, here 1 s)."""

from __future__ import annotations

import asyncio
import os
import signal

from _system import System, executor_served_here, marking_pipeline, wait_until

from kernel.system import _executor
from kernel.system._executor import ExecutorDaemon, WorkdirInUse
from tests.system.test_session40_held_exit_coordinator_restart_review import ENDLESS


def _free(workdir) -> bool:
    """Whether an executor may start on `workdir` now (one started and closed)."""
    try:
        other = ExecutorDaemon(("127.0.0.1", 9), b"cut-short-secret", 1, workdir, host="127.0.0.1")
    except WorkdirInUse:
        return False
    other._workdir_lock.close()
    return True


async def test_a_leave_cut_short_keeps_the_workdirs_lock_until_its_job_processes_have_stopped(
        tmp_path, monkeypatch):
    monkeypatch.setattr(_executor, "STOP_GRACE", 1.0)
    marks, pipeline = marking_pipeline(tmp_path, ENDLESS)
    workdir = tmp_path / "executor"
    system = System(tmp_path)
    async with executor_served_here(system, workdir) as (executor, served, _):
        done = await asyncio.to_thread(system.cli, "submit", pipeline)
        assert done.returncode == 0, done.stderr
        job = done.stdout.splitlines()[0]
        await asyncio.to_thread(wait_until, lambda: list(marks.glob(f"{job}.1-*")),
                                what=f"{job}'s process to work")
        entry = executor.processes[job, 1, 0]
        os.killpg(entry.proc.pid, signal.SIGSTOP)
        served.cancel()  # (SIGTERM's doing: "leaving" told, then the stop)
        for _ in range(3000):  # (the leave's close() stops it now)
            if executor._stopped_here:
                break
            await asyncio.sleep(0.01)
        assert executor._stopped_here == {(job, 1, 0)}
        served.cancel()  # (a second SIGTERM)
        await asyncio.gather(served, return_exceptions=True)
        assert entry.proc.returncode is None  # (still stopping)
        assert not _free(workdir), "the workdir's lock was let go, its job process still running"
        await asyncio.wait_for(executor.close(), 30)  # (the CLI's `finally`)
        assert entry.proc.returncode == -signal.SIGKILL
        assert _free(workdir)
