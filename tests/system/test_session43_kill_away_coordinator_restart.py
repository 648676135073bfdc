"""Session 43: a job killed while its executor was away may still run
there, on its state_dir; the same pipeline submitted again on it waits
until that executor confirms the stop or is lost (session 42). That "may
still run" was the coordinator's memory alone: a coordinator restarted
(SIGKILL, at once after the kill's answer) forgot it, and the job
submitted again was started at once on the other executor, beside the
process still running on the state_dir, and failed for good, `state_dir
... is in use by another run`. It is kept in the catalog now (the job's
`unstopped`), and the restarted coordinator waits as the first did.

A coordinator (a lease of 15 s, so that the executor away is not counted
lost within the test), a peer executor of its own process, and the
executor that goes away served in this loop (`executor_served_here`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3

from _system import marking_pipeline, wait_until, working_or_ended_here

from tests.system.test_session42_kill_away_state_dir import (
    PIPELINE,
    _killed_while_away,
    _resubmitted_waiting,
    _system_with_an_executor_here,
)


async def test_a_restarted_coordinator_waits_for_the_process_of_a_job_killed_while_its_executor_was_away(
        tmp_path):
    marks, pipeline = marking_pipeline(tmp_path, PIPELINE)
    state_dir = tmp_path / "state"
    async with _system_with_an_executor_here(tmp_path) as (system, executor, _):
        job, entry, address = await _killed_while_away(system, executor, pipeline, marks, state_dir)
        # the coordinator killed at once, and started again on its catalog
        system.coordinator.send_signal(signal.SIGKILL)
        await asyncio.to_thread(system.coordinator.wait)
        await asyncio.to_thread(system.start_coordinator, "--executor-timeout", "15")
        await asyncio.to_thread(system.executors_up, 1)  # (the peer executor back)
        resubmitted, waiting = await _resubmitted_waiting(system, pipeline, state_dir)
        state = await asyncio.to_thread(system.job, resubmitted)
        assert state["status"] == "submitted" and entry.code is None, (state, entry.code)
        assert job in waiting and executor.executor_id in waiting and str(state_dir) in waiting, waiting
        assert not (marks / f"{resubmitted}.1").exists()
        executor.address = address  # (back: it stops the killed job's process, and says so)
        state = await working_or_ended_here(system, marks, resubmitted)
        assert (state["status"], state["attempt"], state["message"]) == ("running", 1, None), state
        assert entry.code is not None
        # and the catalog no longer holds the killed job's process as possibly running there
        await asyncio.to_thread(wait_until, lambda: _unstopped(tmp_path / "data", job) == {},
                                what=f"{job}'s row to hold no executor")


def _unstopped(data_dir, job_id: str):
    with contextlib.closing(sqlite3.connect(data_dir / "catalog.sqlite")) as db:
        (row,) = db.execute("SELECT unstopped FROM jobs WHERE id = ?", (job_id,)).fetchall()
    return json.loads(row[0])


def test_a_catalog_from_before_unstopped_opens_its_jobs_waiting_for_nothing(tmp_path):
    from kernel.system import _catalog

    old = _catalog._SCHEMA.replace(" unstopped TEXT NOT NULL DEFAULT '{}',", "")
    assert old != _catalog._SCHEMA
    with contextlib.closing(sqlite3.connect(tmp_path / "catalog.sqlite")) as db:
        db.executescript(old)
        db.execute("INSERT INTO pipelines VALUES ('h', 'p.py', x'00')")
        db.execute("INSERT INTO jobs (id, seq, name, flow, pipeline, processes, cores, max_restarts, status, "
                   "submitted) VALUES ('job-1', 1, 'p.py:flow', 'flow', 'h', 1, 1, 3, 'killed', 0)")
        db.commit()
    catalog = _catalog.Catalog(tmp_path)
    try:
        (job,) = catalog.jobs()
        assert (job.id, job.status, job.unstopped) == ("job-1", "killed", {})
    finally:
        catalog.close()
