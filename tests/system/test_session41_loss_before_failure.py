"""Session 41: a job of two processes failing on a user function's error
(process 1 raised; its peer, process 0, said `lost process 1`, the ABORT
that names the error not out in time on a loaded machine) was restarted
where the master heard the peer's loss first: 1 restart, not 0 (seen once
in CI, tests/system/test_session36_failed_record.py [bad-2]), and at
--max-restarts 0 it failed as `lost process 1 ...; gave up after 0
restart(s)`, the user's error dropped. A loss now waits for the attempt's
other exits (LOSS_HOLD at most): a failure among them ends the job with
it, no restart spent; every exit a loss, it restarts at the last one,
for its cause.

In-process: a real catalog and master, two executors' sessions that answer
as executors do (the exits told as they would tell them)."""

from __future__ import annotations

import asyncio
import time

from kernel.system import _master
from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from tests.system.test_session40_done_on_held_peer_review import first_attempt_ended, running_across

LOST = "lost process 1 (127.0.0.1:7001): the connection broke before the run finished"
FAILED = "kernel 1: operator 'map(check) (step 1)': function 'check' raised ValueError: bad"


def test_a_peers_loss_heard_before_the_user_error_fails_the_job_without_a_restart(tmp_path):
    async def scenario() -> dict:
        master = JobMaster(Catalog(tmp_path))
        job, _ = await running_across(master, 2)
        await master.process_exited(job, 1, 0, 1, LOST)  # (heard first)
        await master.process_exited(job, 1, 1, 1, FAILED)
        state = await first_attempt_ended(master, job)
        await master.close()
        return state

    state = asyncio.run(scenario())
    assert (state["status"], state["restarts"], state["message"]) == ("failed", 0, FAILED), state


def test_a_loss_every_process_of_which_exited_restarts_at_the_last_exit(tmp_path):
    async def scenario() -> tuple[dict, float]:
        master = JobMaster(Catalog(tmp_path))
        job, _ = await running_across(master, 2)
        await master.process_exited(job, 1, 0, 1, LOST)
        heard = time.monotonic()
        await master.process_exited(job, 1, 1, -9, None)  # (killed: a loss too)
        state = await first_attempt_ended(master, job)
        took = time.monotonic() - heard
        await master.close()
        return state, took

    state, took = asyncio.run(scenario())
    # (--max-restarts 0: the loss, taken at the last exit, the cause's, fails it so; LOSS_HOLD
    # not waited for)
    assert (state["status"], state["restarts"]) == ("failed", 0), state
    killed = "process 1 on executor e2 was killed (exit -9)"
    assert state["message"] == f"{killed}; gave up after 0 restart(s)", state
    assert took < _master.LOSS_HOLD, took


def test_a_loss_whose_peer_never_says_more_restarts_after_the_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(_master, "LOSS_HOLD", 0.2)

    async def scenario() -> dict:
        master = JobMaster(Catalog(tmp_path))
        job, _ = await running_across(master, 2)
        await master.process_exited(job, 1, 0, 1, LOST)  # (process 1's exit never heard)
        state = await first_attempt_ended(master, job)
        await master.close()
        return state

    state = asyncio.run(scenario())
    assert (state["status"], state["restarts"]) == ("failed", 0), state
    assert state["message"] == f"{LOST}; gave up after 0 restart(s)", state
