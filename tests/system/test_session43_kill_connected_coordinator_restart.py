"""Session 43: a job killed while its executor is connected has its process
stopped there (SIGINT, a graceful stop up to 3 s; STOP_TIMEOUT, 10 s, for
a stuck one). A coordinator killed meanwhile forgot that process: the
kill's catalog write held only the executors away, so the restarted
coordinator sent that executor a `stop` when it came back but did not wait
for it, and the same pipeline submitted again on the job's state_dir was
started at once, beside the old process still stopping there. Every
executor of the placement is held in the kill's own write (the job's
`unstopped`) now, until it confirms the stop: its stop's answer, or,
after a coordinator restart, on its register.

A coordinator (a lease of 15 s) and an executor served in this loop
(`executor_served_here`), whose stops wait 20 s before SIGKILL; the job's
process, deaf to SIGINT once it is stopping, ends when the test lets it
(the file `release`).

The same with the row as a coordinator of before wrote it (the kill's write
held no connected executor): the executor's register lists the killed
job's process, running on, which the restarted coordinator sent a `stop`
and forgot; it holds it now until that executor confirms it stopped.
(Not another catalog's process of the same job id, nor one of an attempt
of the job running there: `JobMaster._may_hold`.)"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest
from _system import (
    System,
    executor_served_here,
    marking_pipeline,
    submitted_here,
    submitted_marking_here,
    wait_until,
    working_or_ended_here,
)

from kernel.system import _executor
from tests.system.test_session42_kill_away_state_dir import PIPELINE as MARKING
from tests.system.test_session43_kill_away_coordinator_restart import _unstopped
from tests.system.test_session43_kill_away_written_at_once_review import _coordinator_killed_during_the_kill

# (its stop lasts until the test writes `release`: the window in which the coordinator is killed)
PIPELINE = """\
import atexit, os, signal, time

def _held():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    deadline = time.monotonic() + 20
    while not os.path.exists(os.path.join({marks!r}, "release")) and time.monotonic() < deadline:
        time.sleep(0.02)

atexit.register(_held)
""" + MARKING


def _written_by_a_coordinator_of_before(data_dir, job_id: str) -> None:
    with contextlib.closing(sqlite3.connect(data_dir / "catalog.sqlite")) as db:
        db.execute("UPDATE jobs SET unstopped = '{}' WHERE id = ?", (job_id,))
        db.commit()


@pytest.mark.parametrize("row", ["held", "of before"])
async def test_a_restarted_coordinator_waits_for_the_process_a_connected_executor_was_stopping(
        tmp_path, monkeypatch, row):
    monkeypatch.setattr(_executor, "STOP_GRACE", 20.0)  # (no SIGKILL within the test)
    system = System(tmp_path)
    marks, pipeline = marking_pipeline(tmp_path, PIPELINE)
    state_dir, data = tmp_path / "state", tmp_path / "data"
    async with executor_served_here(system, tmp_path / "executor",
                                    coordinator_options=("--executor-timeout", "15")) as (executor, _, _):
        job = await submitted_marking_here(system, pipeline, marks, "--state-dir", state_dir)
        entry = executor.processes[job, 1, 0]
        # the coordinator killed while the executor stops the job's process
        await _coordinator_killed_during_the_kill(system, data, job)
        assert _unstopped(data, job) == {executor.executor_id: 1}
        if row == "of before":
            _written_by_a_coordinator_of_before(data, job)
        await asyncio.to_thread(system.start_coordinator, "--executor-timeout", "15")
        resubmitted = await submitted_here(system, pipeline, "--state-dir", state_dir, "--max-restarts", "0")

        def said_or_started() -> dict | None:
            state = system.job(resubmitted)
            return state if state["message"] or state["status"] != "submitted" else None

        state = await asyncio.to_thread(wait_until, said_or_started, what=f"{resubmitted} to wait or start")
        assert state["status"] == "submitted" and entry.code is None, (state, entry.code)
        assert job in state["message"] and executor.executor_id in state["message"], state
        (marks / "release").touch()  # (its process ends: the executor's stop answers)
        state = await working_or_ended_here(system, marks, resubmitted)
        assert (state["status"], state["attempt"], state["message"]) == ("running", 1, None), state
        assert entry.code is not None
        await asyncio.to_thread(wait_until, lambda: _unstopped(data, job) == {},
                                what=f"{job}'s row to hold no executor")
