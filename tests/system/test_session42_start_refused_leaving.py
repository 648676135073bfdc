"""Session 42: a job's start that reaches its executor as it begins to
leave (stopped on purpose: SIGTERM, Ctrl-C) is refused, `executor e1 is
stopping`; the coordinator sent it before it heard "leaving". That is the
stop's doing, as the loss of a process the stop ends is: the job moves
without spending a restart. It spent one: at --max-restarts 0 the job
failed, `could not start: executor e1 is stopping; gave up after 0
restart(s)`, never having run.

A coordinator and a peer executor of their own processes; the leaving
executor in this one, its event loop held (the test blocks it) from the
submit until the coordinator has sent the start, then stopped as SIGTERM
stops it (its serving task cancelled): the stop runs first, the start after.
(The hold lasts a `submit` and a few `status` from processes of their own:
under load (2 CPU burners, 2 cores) over 7.5 s, the coordinator's ping of
a silent connection (5 s) and its wait for the pong (2.5 s): "No PONG
received", the connection closed, the start failed as `connection closed`,
2 runs in 8. So the coordinator pings after HELD_AT_MOST s, and waits as
long before it counts the executor lost.)"""

from __future__ import annotations

import asyncio
import json
import time

from _system import wait_until
from test_session42_kill_away_state_dir import _system_with_an_executor_here

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("endless")
flow.from_iterable(range(10**9), batch_size=10).map(lambda n: n).sink(id)
"""

# seconds the held loop leaves the coordinator, once it says the job is starting, to send
# the start (a moment: the request follows its save at once)
SENT_WITHIN = 0.2
# seconds the executor's loop may be held before the coordinator takes it for gone
HELD_AT_MOST = 60


def _status(system) -> dict:
    """`status --json`, from a process of its own (this loop is held: no asyncio.run here)."""
    done = system.cli("status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _job(system, job: str) -> dict:
    return next(j for j in _status(system)["jobs"] if j["id"] == job)


async def test_a_start_refused_as_its_executor_leaves_moves_the_job_free(tmp_path):
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(PIPELINE)
    async with _system_with_an_executor_here(tmp_path, executor_timeout=HELD_AT_MOST,
                                             KERNEL_COORDINATOR_HEARTBEAT=str(HELD_AT_MOST)) \
            as (system, executor, served):
        # (this loop held from here: the executor reads nothing until the stop has begun)
        done = system.cli("submit", pipeline, "--executors", executor.executor_id, "--max-restarts", "0")
        assert done.returncode == 0, done.stderr
        job = done.stdout.splitlines()[0]
        wait_until(lambda: _job(system, job)["status"] == "starting", what=f"{job} to start")
        time.sleep(SENT_WITHIN)  # (the loop still held)
        served.cancel()  # (SIGTERM's doing: "leaving", then the stop; the start read after it)

        def moved_or_ended() -> dict | None:
            state = _job(system, job)
            return state if state["status"] != "starting" else None

        state = await asyncio.to_thread(wait_until, moved_or_ended, what=f"{job} to move")
        assert not [key for key in executor.processes if key[0] == job], \
            "the start reached the executor before its stop began: nothing to see"
        assert (state["status"], state["restarts"]) == ("restarting", 0), state
