"""Session 40: an executor stopped (SIGTERM, Ctrl-C) while connected tells
the coordinator it is leaving, stops its job processes and says it has
left; their jobs move without spending a restart. A job process that had
failed on its own as the stop began (its exit not yet seen: on its way
through the event loop) was moved the same way, free: its exit, noted
while the executor was leaving, was never told, and the job whose user
function had raised ran again instead of failing, its error lost. Its exit
is now told before "left", as its own: a failure, per the job's restart
policy.

A coordinator of its own process; the executor in this one, its loop held
from the job process's exit until its stop (the cancel a SIGTERM does) has
begun."""

from __future__ import annotations

import asyncio
import re

from _system import System, executor_served_here, wait_until
from test_session38_stopped_note_names_its_processes import FAILING
from test_session39_exits_while_away import ENDING

from kernel.system._executor import ExecutorDaemon
from tests.system.test_session39_exits_while_away_review import _ended


async def _decided(system: System, job: str) -> dict:
    def decided() -> dict | None:
        state = system.job(job)
        return state if state["status"] not in ("starting", "running") else None

    return await asyncio.to_thread(wait_until, decided, what=f"{job} to end or move")


async def _submitted_and_working(system: System, executor: ExecutorDaemon, pipeline, *options):
    done = await asyncio.to_thread(system.cli, "submit", pipeline, *options)
    assert done.returncode == 0, done.stderr
    job = done.stdout.splitlines()[0]
    await asyncio.to_thread(wait_until, lambda: system.job(job)["status"] == "running", what=f"{job} to run")
    return job, executor.processes[job, 1, 0]


async def _ended_as_its_executor_is_stopped(tmp_path, source: str) -> dict:
    """A job of `source` (one process, --max-restarts 0), its process ended
    (its flag created) just as its executor is stopped: the job's state once
    decided."""
    system = System(tmp_path)
    flag = tmp_path / "flag"
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(source.format(flag=str(flag)))
    async with executor_served_here(system, tmp_path / "executor") as (executor, served, _):
        job, entry = await _submitted_and_working(system, executor, pipeline, "--max-restarts", "0")
        flag.touch()
        _ended(entry.proc.pid)  # (the loop held: its exit not yet seen)
        served.cancel()  # (SIGTERM's doing, `_stopped_by_sigterm_too`)
        await asyncio.gather(served, return_exceptions=True)
        await executor.close()  # (the CLI's `finally`)
        return await _decided(system, job)


async def test_a_process_that_failed_on_its_own_as_its_executor_was_stopped_counts_as_a_failure(tmp_path):
    state = await _ended_as_its_executor_is_stopped(tmp_path, FAILING)
    assert (state["status"], state["attempt"], state["restarts"]) == ("failed", 1, 0), state
    assert re.fullmatch(r"operator 'map\(step\) \(step 1\)': function 'step' raised RuntimeError: "
                        r"told to fail; on record: \d+", state["message"]), state


async def test_a_process_that_completed_as_its_executor_was_stopped_completes_its_job(tmp_path):
    """(It was moved too, and its job ran again from its start.)"""
    state = await _ended_as_its_executor_is_stopped(tmp_path, ENDING)
    assert (state["status"], state["attempt"], state["restarts"], state["message"]) == \
        ("completed", 1, 0, None), state
