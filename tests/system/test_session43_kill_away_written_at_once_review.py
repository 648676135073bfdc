"""Session 43 review: a job killed while one of its executors was away
keeps that executor in its catalog row (`unstopped`), so that a restarted
coordinator still waits for the process there before starting the job
submitted again on its state_dir. That row was written only after the
stops of the job's other processes, on the executors still connected,
had answered (up to STOP_TIMEOUT, 10 s; a graceful stop takes up to 3 s):
a coordinator killed meanwhile left the job `killed` in the catalog and
waited for nowhere, and the restarted one started the job submitted again
beside the process still running on the state_dir. The kill's own write
carries the executors away now.

A job of two processes: one on the executor served in this loop, which
goes away, one on a peer executor process, stopped (SIGSTOP) so that its
stop does not answer while the coordinator is killed. (The process on the
executor away may end of itself meanwhile, its peer stopped: unknown to
the coordinator until that executor says so.)"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3

from _system import SECRET, System, executor_served_here, marking_pipeline, submitted_marking_here, wait_until

from kernel.system import Client
from tests.system.test_session42_kill_away_state_dir import PIPELINE, _resubmitted_waiting, _sent_away
from tests.system.test_session43_kill_away_coordinator_restart import _unstopped


def _status(data_dir, job_id: str) -> str:
    with contextlib.closing(sqlite3.connect(data_dir / "catalog.sqlite")) as db:
        (row,) = db.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchall()
    return row[0]


async def _coordinator_killed_during_the_kill(system: System, data_dir, job: str) -> None:
    """`job` killed through a client of the coordinator's, and the
    coordinator killed (SIGKILL) as soon as its catalog holds the job
    killed, before the kill answered (the request is given up)."""
    async with Client((system.host, system.port), SECRET.encode(), timeout=10.0) as client:
        killing = asyncio.ensure_future(client.request("kill", job=job))
        await asyncio.to_thread(wait_until, lambda: _status(data_dir, job) == "killed",
                                what=f"{job} killed in the catalog")
        system.coordinator.send_signal(signal.SIGKILL)
        await asyncio.to_thread(system.coordinator.wait)
        killing.cancel()
        await asyncio.gather(killing, return_exceptions=True)


async def test_a_job_killed_while_an_executor_was_away_is_waited_for_by_a_coordinator_killed_during_its_stops(
        tmp_path):
    system = System(tmp_path)
    marks, pipeline = marking_pipeline(tmp_path, PIPELINE)
    state_dir, data = tmp_path / "state", tmp_path / "data"
    async with executor_served_here(system, tmp_path / "executor", peers=1,
                                    coordinator_options=("--executor-timeout", "15")) as (executor, _, peers):
        await asyncio.to_thread(system.executors_up, 2)
        (peer,) = peers
        peer_id = await asyncio.to_thread(system.executor_id, peer)
        job = await submitted_marking_here(system, pipeline, marks, "--state-dir", state_dir,
                                           "--processes", "2",
                                           "--executors", f"{executor.executor_id},{peer_id}")
        address = await _sent_away(system, executor)
        peer.send_signal(signal.SIGSTOP)  # (its stop answers only once it runs again)
        try:  # (the coordinator killed while it waits for the peer's stop)
            await _coordinator_killed_during_the_kill(system, data, job)
        finally:
            peer.send_signal(signal.SIGCONT)
        # (the peer too, still stopping it: held until it confirms the stop,
        # test_session43_kill_connected_coordinator_restart.py)
        assert _unstopped(data, job) == {executor.executor_id: 1, peer_id: 1}
        await asyncio.to_thread(system.start_coordinator, "--executor-timeout", "15")
        await asyncio.to_thread(system.executors_up, 1)  # (the peer back)
        resubmitted, waiting = await _resubmitted_waiting(system, pipeline, state_dir)
        assert job in waiting and executor.executor_id in waiting, waiting
        state = await asyncio.to_thread(system.job, resubmitted)
        assert state["status"] == "submitted", state
        executor.address = address  # (back: it stops the killed job's process, and says so)

        def started() -> dict | None:
            state = system.job(resubmitted)
            return state if state["status"] != "submitted" else None

        state = await asyncio.to_thread(wait_until, started, what=f"{resubmitted} to start")
        assert state["status"] in ("starting", "running"), state
