"""Session 42 review: a job submitted on the state_dir of a killed job
whose process may still run (its executor away) waits, saying so
(`JobMaster._state_dir_free`). Once that process is known to have stopped
(its executor confirmed, or was lost: it fences it) the message stayed,
the job still waiting for room (every executor left busy): `status` said
for good that it waited for a process that had stopped. Only its start
cleared it. Now the message goes as the state_dir is free.

In-process: a real catalog and master, two executors' sessions that answer
as executors do (`AnsweringExecutor`)."""

from __future__ import annotations

import asyncio

from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from tests.system.test_session40_done_on_held_peer_review import AnsweringExecutor


async def _submitted(master: JobMaster, executors: list[str], state_dir: str | None) -> str:
    return (await master.submit(filename="p.py", content=b"", digest="d" * 64, flow="flow", processes=1,
                                cores=1, executors=executors, state_dir=state_dir, epoch_interval=None,
                                max_restarts=0)).id


async def _until(master: JobMaster, condition) -> None:
    while not condition():
        await master.wait_for_change(5)


def test_the_wait_for_a_killed_jobs_process_is_not_said_once_it_has_stopped(tmp_path):
    state_dir = str(tmp_path / "state")

    async def scenario() -> tuple[dict, dict]:
        master = JobMaster(Catalog(tmp_path / "catalog"))
        sessions = {name: AnsweringExecutor(name, 7000 + n) for n, name in enumerate(("e1", "e2"))}
        for name, session in sessions.items():
            master.register(session, {"executor": name, "cores": 1, "host": "127.0.0.1"})
        busy = await _submitted(master, ["e2"], None)  # (e2's core taken for the whole test)
        killed = await _submitted(master, ["e1"], state_dir)
        await _until(master, lambda: all(master.job_status(j)["status"] == "running" for j in (busy, killed)))
        master.disconnected("e1", sessions["e1"])  # (away: its process may run on)
        await master.kill(killed)
        again = await _submitted(master, None, state_dir)
        await _until(master, lambda: master.job_status(again)["message"])
        waiting = dict(master.job_status(again))
        await master.executor_lost("e1", "its lease is over")  # (it fences its processes)
        master.reconcile()
        state = dict(master.job_status(again))
        await master.close()
        return waiting, state

    waiting, state = asyncio.run(scenario())
    assert waiting["status"] == "submitted" and "job-2's process" in waiting["message"], waiting
    assert (state["status"], state["message"]) == ("submitted", None), state
