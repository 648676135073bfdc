"""Session 44 review: a start whose (job, attempt, process) is held by
another catalog's process still stopping waits for that process's end, but
no longer than the coordinator waits for the start's answer. One that does
not end (SIGKILL-proof: a process in uninterruptible sleep, here one whose
SIGKILL never comes within the test) was waited for past the coordinator's
30 s: the coordinator, its start timed out, restarted the job elsewhere (or
as attempt 2 here), and the start, still waiting, later ran attempt 1 too,
a process of the job that nobody stops, beside its next attempt."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import time

import pytest
from _system import System, executor_served_here, marking_pipeline
from test_system import NOOP

from kernel.system import _executor
from kernel.system._pipeline_file import file_fields
from kernel.system._wire import RequestError, answer_by
from tests.system.test_session43_kill_connected_coordinator_restart import PIPELINE
from tests.system.test_session44_foreign_same_id import submitted_marking_here


async def test_a_start_waits_for_another_catalogs_stopping_process_no_longer_than_its_answer_is_due(
        tmp_path, monkeypatch):
    monkeypatch.setattr(_executor, "STOP_GRACE", 60.0)  # (its SIGKILL never comes within the test)
    system = System(tmp_path)
    marks, pipeline = marking_pipeline(tmp_path, PIPELINE)
    patient = ("--executor-timeout", "15")  # (the executor keeps its process through the restart)
    async with executor_served_here(system, tmp_path / "executor",
                                    coordinator_options=patient) as (executor, _, _):
        assert await submitted_marking_here(system, pipeline, marks) == "job-1"
        theirs = executor.processes["job-1", 1, 0]
        system.coordinator.kill()
        await asyncio.to_thread(system.coordinator.wait)
        await asyncio.to_thread(system.start_coordinator, *patient, "--data", str(tmp_path / "new"))
        await asyncio.to_thread(system.executors_up, 1)  # (their job-1 asked to stop: deaf to SIGINT)
        assert theirs.catalog != executor._recorded("catalog")
        content = NOOP.encode()
        start = {"job": "job-1", "attempt": 1, "process": 0, "flow": "flow", "filename": "noop.py",
                 **file_fields(content), "digest": hashlib.sha256(content).hexdigest(), "cores": 1}
        # (the start as a request due within 1 s more delivers it: `_wire.Session._serve`)
        context = contextvars.copy_context()
        context.run(answer_by.set, time.monotonic() + 1.0)
        began = time.monotonic()
        with pytest.raises(RequestError, match=r"job-1 attempt 1 process 0 of another catalog .* is still "
                                               r"stopping here"):
            await asyncio.wait_for(asyncio.get_running_loop().create_task(executor._start(start),
                                                                          context=context), 10)
        assert time.monotonic() - began < 5
        assert executor.processes["job-1", 1, 0] is theirs and theirs.code is None  # (none started)
        (marks / "release").touch()
        await asyncio.wait_for(theirs.followed, 15)
        await asyncio.sleep(0.1)  # (no start left waiting to run attempt 1 now)
        assert executor.processes["job-1", 1, 0] is theirs
