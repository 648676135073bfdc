"""Session 41 review: a loss held for the attempt's other exits
(`_restart_unless_failed`, LOSS_HOLD) was turned into a free move where an
executor of the attempt was stopped on purpose within the hold: process 0
said `lost process 1` (no executor of the job leaving then: a failure),
and the stop of either executor a moment later moved the job `not a
failure: no restart spent` (0 restarts, where before the hold the loss
restarted the job at once, 1 restart): a loss escaped --max-restarts. It
spends its restart still, and the restart names the loss.

In-process: a real catalog and master, executors' sessions that answer as
executors do (the exits told as they would tell them)."""

from __future__ import annotations

import asyncio

import pytest

from kernel.system import _master
from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from tests.system.test_session40_done_on_held_peer_review import running_across

LOST = "lost process 1 (127.0.0.1:7001): the connection broke before the run finished"


@pytest.mark.parametrize("stopped", [0, 1])  # (the executor of the process that said it, or of the one lost)
def test_a_loss_held_when_an_executor_is_stopped_spends_its_restart(tmp_path, stopped):
    async def scenario() -> dict:
        master = JobMaster(Catalog(tmp_path))
        job, placement = await running_across(master, 2)
        master.jobs[job].max_restarts = 1
        await master.process_exited(job, 1, 0, 1, LOST)  # (held: process 1's exit not heard)
        master.executor_leaving(placement[stopped])
        master.executor_left(placement[stopped])
        while (state := master.job_status(job))["attempt"] == 1:
            await master.wait_for_change(_master.LOSS_HOLD * 4)
        await master.close()
        return dict(state)

    state = asyncio.run(scenario())
    assert (state["attempt"], state["restarts"], state["message"]) == (2, 1, LOST), state


def test_a_loss_held_then_found_the_coordinators_absence_moves_free(tmp_path):
    async def scenario() -> dict:
        master = JobMaster(Catalog(tmp_path))
        job, _ = await running_across(master, 2)
        master.jobs[job].max_restarts = 1
        await master.process_exited(job, 1, 0, 1, LOST)  # (held)
        # (process 1 fenced while its executor was cut off from the coordinator, restarted since)
        await master.process_exited(job, 1, 1, -9, "fenced: ...", coordinator_away=True)
        while (state := master.job_status(job))["attempt"] == 1:
            await master.wait_for_change(_master.LOSS_HOLD * 4)
        await master.close()
        return dict(state)

    state = asyncio.run(scenario())
    assert (state["attempt"], state["restarts"]) == (2, 0), state
    assert state["message"].startswith("process 1 on executor e2 ended while the coordinator was away"), state
