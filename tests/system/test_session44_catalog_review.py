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
import signal
import time

import pytest
from _system import System, executor_served_here, marking_pipeline, submitted_here, wait_until
from test_system import NOOP

from kernel.system import _executor
from kernel.system._pipeline_file import file_fields
from kernel.system._wire import RequestError, answer_by
from tests.system.test_session35_stopped_executor_restarts import MARKING
from tests.system.test_session43_kill_connected_coordinator_restart import PIPELINE
from tests.system.test_session44_catalog_per_process import (
    OTHER_CATALOG,
    ScriptedExecutor,
    _job_1,
    _running_job_1,
)
from tests.system.test_session44_foreign_same_id import PATIENT, their_job_1_stopping


async def test_a_start_waits_for_another_catalogs_stopping_process_no_longer_than_its_answer_is_due(
        tmp_path, monkeypatch):
    monkeypatch.setattr(_executor, "STOP_GRACE", 60.0)  # (its SIGKILL never comes within the test)
    system = System(tmp_path)
    marks, pipeline = marking_pipeline(tmp_path, PIPELINE)
    async with executor_served_here(system, tmp_path / "executor",
                                    coordinator_options=PATIENT) as (executor, _, _):
        theirs = await their_job_1_stopping(system, executor, marks, pipeline)
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
        assert executor.processes["job-1", 1, 0] is theirs


async def test_the_stop_of_another_catalogs_listed_process_spares_ours_of_the_same_job_and_attempt(
        tmp_path, monkeypatch):
    """Their job-1 attempt 1 process 0, still stopping on the executor served
    here, and our job-1 attempt 1 process 1 (two processes: process 0 on
    the peer) running there beside it. The executor registers again (its
    connection cut): the coordinator stops the other catalog's process it
    lists, by (job, attempt), which named ours too: stopped, our job-1 lost
    a process, a restart spent for another catalog's job."""
    monkeypatch.setattr(_executor, "STOP_GRACE", 20.0)  # (no SIGKILL within the test)
    system = System(tmp_path)
    marks, pipeline = marking_pipeline(tmp_path, PIPELINE)
    ours = tmp_path / "ours.py"
    ours.write_text(MARKING.format(marks=str(tmp_path)))
    async with executor_served_here(system, tmp_path / "executor", peers=1,
                                    coordinator_options=PATIENT) as (executor, _, (peer,)):
        here, there = executor.executor_id, await asyncio.to_thread(system.executor_id, peer)
        theirs = await their_job_1_stopping(system, executor, marks, pipeline, 2, "--executors", here)
        stopped = []
        stop_one = executor._stop_one

        async def noted_stop(entry):
            stopped.append(entry)
            await stop_one(entry)

        monkeypatch.setattr(executor, "_stop_one", noted_stop)
        assert await submitted_here(system, ours, "--processes", "2", "--executors", f"{there},{here}") \
            == "job-1"
        await asyncio.to_thread(wait_until, lambda: system.job("job-1")["status"] == "running",
                                what="our job-1 to run")
        mine = executor.processes["job-1", 1, 1]
        assert mine.code is None and mine.catalog == executor._recorded("catalog") != theirs.catalog
        before = stopped.count(theirs)
        first = executor.session
        await first.close()  # (it registers again, their job-1 still stopping)
        await asyncio.to_thread(wait_until, lambda: stopped.count(theirs) > before,
                                what="their job-1 to be stopped again")
        for _ in range(10):  # (the stop's other targets, gathered with it, begun too)
            await asyncio.sleep(0)
        assert mine not in stopped and mine.code is None
        state = await asyncio.to_thread(system.job, "job-1")
        assert (state["status"], state["attempt"], state["restarts"]) == ("running", 1, 0), state
        (marks / "release").touch()
        await asyncio.wait_for(theirs.followed, 15)


@pytest.mark.parametrize("registered_for", ["ours", "theirs"])
def test_an_executor_of_before_lists_processes_naming_no_catalog_judged_by_its_registers(
        tmp_path, registered_for):
    """An executor of before names no catalog per process: each is judged by
    the catalog its register names, as before (ours: adopted, job-1 runs on
    at attempt 1; another: stopped, its stop naming that catalog, which such
    an executor ignores, and our job-1 run again)."""
    system = System(tmp_path)

    async def scenario():
        executor, ours = await _running_job_1(system, tmp_path)
        system.coordinator.send_signal(signal.SIGKILL)
        system.coordinator.wait()
        await executor.close()
        await asyncio.to_thread(system.start_coordinator)  # (the same catalog: job-1 running on e1)
        catalog = ours if registered_for == "ours" else OTHER_CATALOG
        back = ScriptedExecutor(system)
        await back.register(executor="e1", instance="second", catalog=catalog, processes=[
            {"job": "job-1", "attempt": 1, "process": 0, "code": None}])
        await back.session.request("heartbeat")  # (after the register's reconcile)
        if registered_for == "ours":
            assert await asyncio.to_thread(_job_1, system) == ("running", 1, 0)
            assert back.asked.empty(), back.asked
        else:
            stop = await back.next_asked("stop")
            assert (stop["job"], stop["attempt"], stop["catalog"]) == ("job-1", 1, OTHER_CATALOG)
            start = await back.next_asked("start")
            assert (start["job"], start["attempt"]) == ("job-1", 2)
        await back.close()

    system.run_with_coordinator(scenario)


def test_the_dashboard_of_another_catalogs_process_is_not_taken_for_ours(tmp_path):
    """Another catalog's job-1 attempt 1 process 0 says where its dashboard
    listens: our job-1's page does not link to it; our own's does."""
    system = System(tmp_path)

    async def scenario():
        executor, ours = await _running_job_1(system, tmp_path)
        for catalog, url in ((OTHER_CATALOG, "http://127.0.0.1:1/"), (ours, "http://127.0.0.1:2/")):
            await executor.session.request("dashboard", job="job-1", attempt=1, process=0, url=url,
                                           catalog=catalog)
            shown = (await asyncio.to_thread(system.job, "job-1"))["dashboards"]
            assert shown == [None if catalog == OTHER_CATALOG else url], shown
        await executor.close()

    system.run_with_coordinator(scenario)
