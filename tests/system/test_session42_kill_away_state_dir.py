"""Session 42: a `kill` of a job whose executor is away (its connection
closed, not yet counted lost) answers at once, the job killed; its process
may still run there, on the job's state_dir (`kernel run`'s lock), until
that executor comes back and stops it, or is lost (it fences it). The same
pipeline submitted again on that state_dir was started beside it, as soon
as it had a place, and failed for good, `state_dir ... is in use by
another run`. It waits now, saying for what, until that process is known
to have stopped.

A coordinator (a lease of 15 s, so that the executor comes back within it)
and a peer executor of their own processes; the executor that goes away in
this one, cut off by dialling a port where nothing listens, its connection
closed."""

from __future__ import annotations

import asyncio
import contextlib

from _system import (
    System,
    executor_served_here,
    free_port,
    marking_pipeline,
    submitted_here,
    submitted_marking_here,
    wait_until,
    working_or_ended_here,
)

PIPELINE = """\
import os
from kernel import Dataflow

def step(n):
    path = os.path.join({marks!r}, os.environ["KERNEL_RUN"])
    if not os.path.exists(path):
        open(path, "w").close()
    return n

flow = Dataflow("marking")
flow.from_iterable(range(10**9), batch_size=10).map(step).sink(id)
"""


@contextlib.asynccontextmanager
async def _system_with_an_executor_here(tmp_path, executor_timeout: float = 15, **coordinator_env):
    """A system (its coordinator's --executor-timeout `executor_timeout`,
    `coordinator_env` added to its environment), an executor of its own and
    one served in this loop (`executor_served_here`): yields (system, that
    executor, its serving task) once the coordinator counts both up."""
    system = System(tmp_path)
    async with executor_served_here(system, tmp_path / "executor", peers=1,
                                    coordinator_options=("--executor-timeout", f"{executor_timeout:g}"),
                                    coordinator_env=coordinator_env) as (executor, served, _):
        await asyncio.to_thread(system.executors_up, 2)
        yield system, executor, served


def _state(system: System, executor_id: str) -> str:
    return next(e["state"] for e in system.status()["executors"] if e["id"] == executor_id)


async def _sent_away(system: System, executor) -> tuple[str, int]:
    """`executor` (served in this loop) cut off: its connection closed, its
    coordinator's address one where nothing listens, until the coordinator
    counts it away ("reconnecting"). Returns the address to give it back."""
    address = executor.address
    executor.address = ("127.0.0.1", free_port())  # (nothing listens there: it stays away)
    await executor.session.close()
    await asyncio.to_thread(wait_until, lambda: _state(system, executor.executor_id) == "reconnecting",
                            what="the executor to be away")
    return address


async def _killed_while_away(system: System, executor, pipeline, marks, state_dir):
    """(job, its process's entry, `executor`'s address to give back):
    `pipeline` submitted on `state_dir` to `executor` (served in this loop),
    working, then that executor sent away (`_sent_away`) and the job killed,
    the kill answered at once."""
    job = await submitted_marking_here(system, pipeline, marks, "--state-dir", state_dir,
                                       "--executors", executor.executor_id)
    entry = executor.processes[job, 1, 0]
    address = await _sent_away(system, executor)
    killed = await asyncio.to_thread(system.cli, "kill", job)
    assert (killed.returncode, killed.stdout.strip()) == (0, f"{job} killed"), killed.stderr
    return job, entry, address


async def _resubmitted_waiting(system: System, pipeline, state_dir) -> tuple[str, str]:
    """(id, message): `pipeline` submitted again on `state_dir`, no restart,
    once its job says what it waits for."""
    resubmitted = await submitted_here(system, pipeline, "--state-dir", state_dir, "--max-restarts", "0")
    waiting = await asyncio.to_thread(wait_until, lambda: system.job(resubmitted)["message"],
                                      what=f"{resubmitted} to say what it waits for")
    return resubmitted, waiting


async def test_a_job_submitted_again_on_the_state_dir_of_one_killed_while_its_executor_was_away_waits(
        tmp_path):
    marks, pipeline = marking_pipeline(tmp_path, PIPELINE)
    state_dir = tmp_path / "state"
    async with _system_with_an_executor_here(tmp_path) as (system, executor, _):
        job, entry, address = await _killed_while_away(system, executor, pipeline, marks, state_dir)
        # while the first's process may still run, the second waits, and says for what
        resubmitted, waiting = await _resubmitted_waiting(system, pipeline, state_dir)
        state = await asyncio.to_thread(system.job, resubmitted)
        assert state["status"] == "submitted" and entry.code is None, (state, entry.code)
        assert job in waiting and executor.executor_id in waiting and str(state_dir) in waiting, waiting
        executor.address = address  # (back: it stops the killed job's process, and says so)
        state = await working_or_ended_here(system, marks, resubmitted)
        assert (state["status"], state["attempt"], state["message"]) == ("running", 1, None), state
        assert entry.code is not None
