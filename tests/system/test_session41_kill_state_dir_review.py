"""Session 41 (review): a `kill` of a job whose process is on an executor
being stopped (it said "leaving") answers at once, without waiting for that
executor's stop of it (SIGINT, SIGKILL 3 s later). But a job with a
state_dir holds it (`kernel run`'s lock, `.running-0`) until its process has
stopped: the same job submitted again on it as the kill answered (a
`kill` then a `submit`) failed for good, `state_dir ... is in use by another
run` (seen: the kill answered in 0.3-0.5 s, the process writing on for
2.5 s more; before, the kill answered in 2.8 s and the resubmission ran).
The kill of a job with a state_dir waits for that stop again.

A coordinator and a peer executor of their own processes; the stopped
executor in this one (its stop's grace 1 s), its job's step holding SIGINT
off (as a long call into C does)."""

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
    working_or_ended_here,
)

from kernel.system import _executor
from kernel.system._executor import _has_ended

PIPELINE = """\
import os
import signal
from kernel import Dataflow

def step(n):
    signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGINT}})  # (a long call into C: SIGINT waits)
    path = os.path.join({marks!r}, os.environ["KERNEL_RUN"])
    if not os.path.exists(path):
        open(path, "w").close()
    return n

flow = Dataflow("held")
flow.from_iterable(range(10**9), batch_size=10).map(step).sink(id)
"""


async def test_a_kill_during_an_executors_stop_waits_for_the_process_holding_the_state_dir(
        tmp_path, monkeypatch):
    monkeypatch.setattr(_executor, "STOP_GRACE", 1.0)
    marks, pipeline = marking_pipeline(tmp_path, PIPELINE)
    state_dir = tmp_path / "state"
    system = System(tmp_path)
    async with executor_served_here(system, tmp_path / "executor", peers=1) as (executor, served, _):
        job = await submitted_marking_here(system, pipeline, marks, "--state-dir", state_dir,
                                           "--executors", executor.executor_id)
        entry = executor.processes[job, 1, 0]
        served.cancel()  # (SIGTERM's doing: "leaving" told, then the stop)
        await asyncio.to_thread(wait_until, lambda: any(e["id"] == executor.executor_id and e["state"] ==
                                                        "leaving" for e in system.status()["executors"]),
                                what="the executor to leave")
        killed = await asyncio.to_thread(system.cli, "kill", job)
        assert (killed.returncode, killed.stdout.strip()) == (0, f"{job} killed"), killed.stderr
        assert _has_ended(entry), f"{job} killed, its process {entry.proc.pid} still running on its state_dir"
        resubmitted = await submitted_here(system, pipeline, "--state-dir", state_dir)
        state = await working_or_ended_here(system, marks, resubmitted)
        assert (state["status"], state["attempt"], state["message"]) == ("running", 1, None), state
        assert entry.proc.returncode == -signal.SIGKILL  # (its stop's SIGKILL, SIGINT held off)
