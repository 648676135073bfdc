"""Session 43 review: `_end` holds each executor of the ended attempt in the
job's row (`unstopped`) until its stop answers (`_stop_held`). Each was let
go in a write of its own, and one whose every process had exited (heard)
was held too, though it runs nothing of the job: a job of three processes
that completed wrote its row four times where it wrote it once, and a kill
of one on three executors five times. Now one whose processes have all
exited is not held, and those whose stops answer are let go in one write.

In-process: a real catalog and master, executors' sessions that answer as
executors do (`AnsweringExecutor`)."""

from __future__ import annotations

import asyncio

import pytest

from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from tests.system.test_session40_done_on_held_peer_review import running_across


def _counting_rows(master: JobMaster, job: str) -> list[dict]:
    """The rows of `job` written to the catalog from now on (status, unstopped)."""
    written: list[dict] = []
    save_row = master.catalog.save_row

    def counted(row):
        if row["id"] == job:
            written.append({"status": row["status"], "unstopped": row["unstopped"]})
        return save_row(row)

    master.catalog.save_row = counted
    return written


@pytest.mark.parametrize("end", ["completed", "killed"])
def test_a_job_ending_on_three_executors_writes_its_row_at_most_three_times(tmp_path, end):
    async def scenario() -> tuple[list[dict], dict]:
        master = JobMaster(Catalog(tmp_path / "catalog"))
        job, placement = await running_across(master, 3)
        written = _counting_rows(master, job)
        if end == "completed":
            for process in range(len(placement)):
                await master.process_exited(job, 1, process, 0, None)
        else:
            await master.kill(job)
        await master.report_unsaved()
        state = dict(master.job_status(job))
        unstopped = dict(master.jobs[job].unstopped)
        await master.close()
        return written, {**state, "unstopped": unstopped}

    written, state = asyncio.run(scenario())
    assert (state["status"], state["unstopped"]) == (end, {}), state
    # completed: its end; killed: the kill's own write, the end's, the stops' answers
    assert len(written) == (1 if end == "completed" else 3), written
