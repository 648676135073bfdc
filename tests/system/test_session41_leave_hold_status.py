"""Session 41: a job while one of its executors is being stopped (it said
"leaving", and stops its job processes before it says "left").

A peer's exit heard meanwhile is held for that executor's "left" (or its
loss, or STOP_TIMEOUT at most: `JobMaster._held`), which moves the job free.
Meanwhile `status` showed the job `running` with no message, its peer dead:
it now says what it waits for.

And a `kill` of the job waited for that executor's stop of its process
(SIGINT, then SIGKILL 3 s later; here a stop that does not end, as over a
process SIGKILL does not end: STOP_TIMEOUT, 10 s) before it answered: the
job was `killed` in the catalog at once all the same. It answers at once
now; the stop goes on.

A coordinator and the peer's executor of their own processes; the stopped
executor in this one, its stop never ending."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time

from _system import SECRET, System, descendants, marking_pipeline, submitted_working_here, wait_until

from kernel.system import Client
from kernel.system._executor import ExecutorDaemon
from kernel.system._master import STOP_TIMEOUT
from tests.system.test_session40_held_exit_coordinator_restart_review import ENDLESS, _leads

# seconds within which the status must say it, or the kill answer (well under STOP_TIMEOUT)
AT_ONCE = STOP_TIMEOUT / 2


@contextlib.asynccontextmanager
async def _leaving(tmp_path):
    """(system, job, the stopping executor's id, the peer's executor): a job of
    two processes, one on each executor, the in-process one being stopped
    ("leaving" told and seen in `status`), its stop never ending."""
    system = System(tmp_path)
    marks, pipeline = marking_pipeline(tmp_path, ENDLESS)
    executor = ExecutorDaemon((system.host, system.port), SECRET.encode(), 1, tmp_path / "stopped",
                              host="127.0.0.1", heartbeat=0.4)
    registered, release = asyncio.Event(), asyncio.Event()
    served = None
    close, stop = executor.close, executor._stop
    try:
        system.start_coordinator()
        peer = system.start_executor(1)
        served = asyncio.ensure_future(executor.run(ready=lambda _: registered.set()))
        await asyncio.wait_for(registered.wait(), 30)
        stopped_id = executor.executor_id
        await asyncio.to_thread(system.executor_id, peer)
        job = await submitted_working_here(system, pipeline, marks)

        async def never_ending(*_) -> None:  # (its stops wait on a process that does not end)
            await release.wait()

        executor.close = never_ending
        executor._stop = never_ending
        served.cancel()  # (SIGTERM's doing: "leaving" told, then the stop)
        await asyncio.to_thread(wait_until, lambda: any(
            e["id"] == stopped_id and e["state"] == "leaving" for e in system.status()["executors"]),
            what="the executor to leave")
        yield system, job, stopped_id, peer
    finally:
        release.set()
        executor.close, executor._stop = close, stop
        if served is not None:
            served.cancel()
            await asyncio.gather(served, return_exceptions=True)
        await executor.close()
        system.close()


async def test_a_peers_exit_held_for_an_executor_being_stopped_is_shown(tmp_path):
    async with _leaving(tmp_path) as (system, job, stopped_id, peer):
        lost = next(p for p in descendants(peer.pid) if _leads(p))
        os.killpg(lost, signal.SIGKILL)

        def said() -> dict | None:
            state = system.job(job)
            return state if state["message"] else None

        state = await asyncio.to_thread(wait_until, said, timeout=AT_ONCE, what=f"{job}'s message")
        assert (state["status"], state["attempt"], state["restarts"]) == ("running", 1, 0), state
        peer_id = state["placement"][1] if state["placement"][0] == stopped_id else state["placement"][0]
        process = state["placement"].index(peer_id)
        assert state["message"].startswith(
            f"waiting for executor {stopped_id}, being stopped, to leave: process {process} on executor "
            f"{peer_id} ended ("), state


async def test_a_kill_during_an_executors_stop_answers_at_once(tmp_path):
    async with _leaving(tmp_path) as (system, job, _, _peer):
        # (asked from this process, connected first: the CLI's own start-up took 2-3 s on a
        # loaded machine, two busy loops and more beside it, and its kill 6.7 s in all, past
        # AT_ONCE, the coordinator's answer a moment of it)
        async with Client((system.host, system.port), SECRET.encode(), timeout=10.0) as client:
            started = time.monotonic()
            done = await client.request("kill", job=job)
            took = time.monotonic() - started
        assert done == {"job": job, "status": "killed"}, done
        assert took < AT_ONCE, f"the kill answered after {took:.1f} s"
        state = await asyncio.to_thread(system.job, job)
        assert (state["status"], state["message"]) == ("killed", "killed by request"), state
