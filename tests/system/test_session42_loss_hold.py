"""Session 42: a process's loss held for its attempt's other exits
(LOSS_HOLD, `JobMaster._restart_unless_failed`).

- Meanwhile `status` showed the job `running` with no message, one of its
  processes dead: it says now what it waits for, as the hold for an
  executor's stop does.
- The restart's backoff was judged at the hold's end: an attempt that
  failed quickly (STABLE) was counted as having run for as long as the
  hold too, taken for stable, and its series of quick failures forgotten
  (restarted at once, no backing off); and the pause was counted from the
  hold's end, the hold's wait added to it. Both go from the loss now: what
  the attempt ran is until it failed, and the pause after a failure is
  counted from that failure.

In-process: a real catalog and master, two executors' sessions that answer
as executors do (the exits told as they would tell them)."""

from __future__ import annotations

import asyncio
import time

from kernel.system import _master
from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from tests.system.test_session40_done_on_held_peer_review import AnsweringExecutor, first_attempt_ended
from tests.system.test_session41_loss_before_failure import LOST

# (short, for a fast test: what matters is how they compare)
HOLD, STABLE, FIRST = 0.5, 0.6, 1.0
RAN = 0.25  # seconds attempt 2 runs before its loss: quick (< STABLE), not with the hold (> STABLE)


async def _running(master: JobMaster, max_restarts: int) -> str:
    for n, name in enumerate(("e1", "e2")):
        master.register(AnsweringExecutor(name, 7000 + n),
                        {"executor": name, "cores": 1, "host": "127.0.0.1"})
    job = (await master.submit(filename="p.py", content=b"", digest="d" * 64, flow="flow", processes=2,
                               cores=1, executors=None, state_dir=None, epoch_interval=None,
                               max_restarts=max_restarts)).id
    await _attempt_running(master, job, 1)
    return job


async def _attempt_running(master: JobMaster, job: str, attempt: int) -> float:
    """When (monotonic) the job's `attempt` was seen running."""
    while (state := master.job_status(job))["attempt"] != attempt or state["status"] != "running":
        await master.wait_for_change(5)
    return time.monotonic()


def test_status_says_what_a_held_loss_waits_for(tmp_path, monkeypatch):
    monkeypatch.setattr(_master, "LOSS_HOLD", HOLD)

    async def scenario() -> tuple[dict, dict]:
        master = JobMaster(Catalog(tmp_path))
        job = await _running(master, 0)
        await master.process_exited(job, 1, 0, 1, LOST)  # (process 1's exit never heard)
        held = dict(master.job_status(job))
        state = await first_attempt_ended(master, job)
        await master.close()
        return held, state

    held, state = asyncio.run(scenario())
    assert held["status"] == "running", held
    where = f"process 0 on executor {held['placement'][0]}"
    assert held["message"] == (f"waiting for the other processes' exits ({HOLD:g} s at most) before "
                               f"restarting: {where} ended ({LOST})"), held
    assert (state["status"], state["message"]) == ("failed", f"{LOST}; gave up after 0 restart(s)"), state


def test_the_backoff_after_a_held_loss_goes_from_the_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(_master, "LOSS_HOLD", HOLD)
    monkeypatch.setattr(_master, "STABLE", STABLE)
    monkeypatch.setattr(_master, "BACKOFF_FIRST", FIRST)

    async def scenario() -> tuple[float, float, float]:
        master = JobMaster(Catalog(tmp_path))
        job = await _running(master, 5)
        # attempt 1 fails at once, both processes lost: the first quick failure, restarted at once
        await master.process_exited(job, 1, 0, -9, None)
        await master.process_exited(job, 1, 1, -9, None)
        started = await _attempt_running(master, job, 2)
        await asyncio.sleep(RAN - (time.monotonic() - started))
        await master.process_exited(job, 2, 0, 1, LOST)  # (process 1's exit never heard: held)
        lost = time.monotonic()
        await first_attempt_ended_of(master, job, 2)
        not_before = master._not_before[job]
        again = await _attempt_running(master, job, 3)
        await master.close()
        return lost, not_before, again

    lost, not_before, again = asyncio.run(scenario())
    # a quick failure, the second in a row: the next attempt waits FIRST s, from the loss
    assert again - lost >= FIRST, f"attempt 3 started {again - lost:.2f} s after the loss"
    assert not_before - lost < FIRST + HOLD / 2, f"the pause ends {not_before - lost:.2f} s after the loss"


async def first_attempt_ended_of(master: JobMaster, job: str, attempt: int) -> None:
    """Until the job's `attempt` is over (the hold's end)."""
    while (state := master.job_status(job))["attempt"] == attempt and state["status"] == "running":
        await master.wait_for_change(_master.LOSS_HOLD * 4)
