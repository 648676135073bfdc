"""Session 43 review: a killed job's executors are held (its `unstopped`)
until their stops answer (`_stop_held`), said to let each go as it
answers. It let them go only once every stop had answered: one executor
whose stop hung (a process deaf to SIGINT, up to STOP_TIMEOUT) kept the
job's cores on the others busy, its process there long stopped, and a
job waiting for those cores waited with it. Now each is let go as its
own stop answers.

In-process: a real catalog and master, executors' sessions that answer as
executors do (`AnsweringExecutor`), e2's stop held until the test lets it."""

from __future__ import annotations

import asyncio

from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from tests.system.test_session40_done_on_held_peer_review import AnsweringExecutor, running_across


class StoppingSlowly(AnsweringExecutor):
    """An executor's session whose `stop` answers once `done` is set."""

    def __init__(self, name: str, port: int) -> None:
        super().__init__(name, port)
        self.asked, self.done = asyncio.Event(), asyncio.Event()

    async def request(self, kind: str, **fields):
        if kind == "stop":
            self.asked.set()
            await self.done.wait()
        return await super().request(kind, **fields)


def test_an_executor_whose_stop_answered_is_let_go_while_another_still_stops(tmp_path):
    async def scenario() -> tuple[dict, int, dict]:
        master = JobMaster(Catalog(tmp_path / "catalog"))
        job, _ = await running_across(master, 2)
        slow = master.connected["e2"].session = StoppingSlowly("e2", 7001)
        killing = asyncio.ensure_future(master.kill(job))
        await slow.asked.wait()
        deadline = asyncio.get_running_loop().time() + 2.0  # (e1's stop answers at once)
        while "e1" in master.jobs[job].unstopped and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        during, free = dict(master.jobs[job].unstopped), master.free_cores("e1")
        slow.done.set()
        await killing
        after = dict(master.jobs[job].unstopped)
        await master.close()
        return during, free, after

    during, free, after = asyncio.run(scenario())
    assert (during, free) == ({"e2": 1}, 1), (during, free)
    assert after == {}, after
