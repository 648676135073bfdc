"""Session 44: another catalog's process of a job id that is also ours,
listed by a real executor, is stopped by its own attempt and never held
under our job of that id (`JobMaster._adopt`: `_may_hold` is for our own
earlier attempts). Held, our job-1 (completed) was kept waiting for a
process that was never its own, and its confirm stopped every job-1
process there.

The executor is served in this loop, its stops waiting 20 s before
SIGKILL; the other catalog's job-1, deaf to SIGINT once stopping, ends
when the test lets it (the file `release`). It is listed twice: at the
first register (the executor still serving the other catalog), and at a
register after the executor took our catalog in, the process still
stopping: there only its own catalog, recorded with it, says it is not
ours."""

from __future__ import annotations

import asyncio
import signal

from _system import (
    System,
    executor_served_here,
    marking_pipeline,
    submitted_here,
    submitted_marking_here,
    wait_until,
)
from test_system import NOOP, write

from kernel.system import _executor
from tests.system.test_session43_kill_away_coordinator_restart import _unstopped
from tests.system.test_session43_kill_connected_coordinator_restart import PIPELINE

PATIENT = ("--executor-timeout", "15")  # (the executor keeps its process through the coordinator's restart)


async def their_job_1_stopping(system: System, executor, marks, pipeline, executors: int = 1, *options):
    """A marking `pipeline`'s job-1 (submitted with `options`) working on
    the executor served here (its process: returned), then its coordinator
    killed and one started on a new catalog (--data), `executors` up: their
    job-1, deaf to SIGINT, is being stopped there, as another catalog's."""
    assert await submitted_marking_here(system, pipeline, marks, *options) == "job-1"
    theirs = executor.processes["job-1", 1, 0]
    system.coordinator.kill()
    await asyncio.to_thread(system.coordinator.wait)
    await asyncio.to_thread(system.start_coordinator, *PATIENT, "--data", str(system.root / "new"))
    await asyncio.to_thread(system.executors_up, executors)
    assert theirs.catalog != executor._recorded("catalog")
    return theirs


async def test_another_catalogs_process_of_our_job_id_is_stopped_never_held_under_our_job(tmp_path,
                                                                                      monkeypatch):
    monkeypatch.setattr(_executor, "STOP_GRACE", 20.0)  # (no SIGKILL within the test)
    system = System(tmp_path)
    marks, pipeline = marking_pipeline(tmp_path, PIPELINE)
    ours = tmp_path / "ours"
    patient = ("--executor-timeout", "15")  # (the executor keeps its process through the restarts)
    async with executor_served_here(system, tmp_path / "executor",
                                    coordinator_options=(*patient, "--data", str(ours))) as (executor, _, _):
        done = await asyncio.to_thread(system.cli, "submit", write(tmp_path / "noop.py", NOOP), "--wait")
        assert done.stdout.split()[0] == "job-1", done.stderr  # (our job-1: completed)
        our_catalog = executor._recorded("catalog")
        system.coordinator.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(system.coordinator.wait, 30) == 143
        # another catalog, its ids from job-1 again
        await asyncio.to_thread(system.start_coordinator, *patient)
        await asyncio.to_thread(system.executors_up, 1)
        assert await submitted_marking_here(system, pipeline, marks) == "job-1"
        theirs = executor.processes["job-1", 1, 0]
        system.coordinator.kill()
        await asyncio.to_thread(system.coordinator.wait)
        await asyncio.to_thread(system.start_coordinator, *patient, "--data", str(ours))
        # (registered: it lists their job-1, asked to stop; our catalog taken in)
        await asyncio.to_thread(wait_until, lambda: executor._recorded("catalog") == our_catalog,
                                what="the executor to register under our catalog")
        first = executor.session
        await first.close()  # (it registers again, their job-1 still stopping)
        await asyncio.to_thread(wait_until, lambda: executor.session not in (None, first),
                                what="the executor to register again")
        # (a catalog write after both registers: a hold's write, if any, is in before it)
        await submitted_here(system, write(tmp_path / "noop.py", NOOP))
        assert _unstopped(ours, "job-1") == {}
        assert theirs.code is None  # (still stopping: listed at both registers)
        state = await asyncio.to_thread(system.job, "job-1")
        assert (state["status"], state["attempt"], state["restarts"]) == ("completed", 1, 0), state
        (marks / "release").touch()
        await asyncio.to_thread(wait_until, lambda: theirs.code is not None, what="their job-1 to end")
        assert _unstopped(ours, "job-1") == {}


async def test_a_new_catalogs_job_starts_once_the_other_catalogs_process_of_its_id_has_stopped(
        tmp_path, monkeypatch):
    """A new catalog's job-1 placed where the last catalog's job-1 attempt 1
    process 0 still stops: its start was refused, `job-1 attempt 1 process
    0 already runs here`, a restart spent for a process never its own. It
    waits for that process's end, and runs as attempt 1."""
    monkeypatch.setattr(_executor, "STOP_GRACE", 20.0)  # (no SIGKILL within the test)
    system = System(tmp_path)
    marks, pipeline = marking_pipeline(tmp_path, PIPELINE)
    async with executor_served_here(system, tmp_path / "executor",
                                    coordinator_options=PATIENT) as (executor, _, _):
        theirs = await their_job_1_stopping(system, executor, marks, pipeline)  # (deaf until released)
        assert await submitted_here(system, write(tmp_path / "noop.py", NOOP)) == "job-1"
        await asyncio.to_thread(wait_until, lambda: system.job("job-1")["status"] != "submitted",
                                what="the new job-1 to be placed")
        assert theirs.code is None
        (marks / "release").touch()
        state = await asyncio.to_thread(wait_until, lambda: (lambda j: j if j["ended"] else None)(
            system.job("job-1")), what="the new job-1 to end")
        assert (state["status"], state["attempt"], state["restarts"]) == ("completed", 1, 0), state
        assert theirs.code is not None
