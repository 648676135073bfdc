"""Session 43 review: `_end` holds every executor of the ended attempt whose
process may run (the job's `unstopped`), each let go as its stop answers
(`_stop_held`). An executor's report of an exit is served in a task of its
connection, which is cancelled when that connection is closed (it went
silent: `watch`; it registered again: `register`). A job failed by that
report, the stop of its peer's process still under way, was then left
holding the peer for good: the stop's answer was no longer awaited, and
nobody asked the peer again while it stayed connected. Its cores stayed
busy and a job submitted again on its state_dir waited for ever. The
stops now run on in a task of the master's own.

In-process: a real catalog and master, executors' sessions that answer as
executors do, e2's stop held until the test lets it."""

from __future__ import annotations

import asyncio

from kernel.system._catalog import Catalog
from kernel.system._master import JobMaster
from tests.system.test_session40_done_on_held_peer_review import running_across
from tests.system.test_session43_end_stop_each_review import StoppingSlowly


def test_a_failure_report_cancelled_during_the_peers_stop_does_not_hold_the_peer_for_good(tmp_path):
    async def scenario() -> tuple[str, dict, int]:
        master = JobMaster(Catalog(tmp_path / "catalog"))
        job, _ = await running_across(master, 2)
        slow = master.connected["e2"].session = StoppingSlowly("e2", 7001)
        # (e1's report, served in its connection's task: the job fails, its peer is stopped)
        reported = asyncio.ensure_future(master.process_exited(job, 1, 0, 1, "ValueError: boom"))
        await slow.asked.wait()
        reported.cancel()  # (e1's connection closed meanwhile)
        await asyncio.gather(reported, return_exceptions=True)
        slow.done.set()  # (e2's stop answers: its process has stopped)
        deadline = asyncio.get_running_loop().time() + 2.0
        while master.jobs[job].unstopped and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        state = (master.jobs[job].status, dict(master.jobs[job].unstopped), master.free_cores("e2"))
        await master.close()
        return state

    status, unstopped, free = asyncio.run(scenario())
    assert (status, unstopped, free) == ("failed", {}, 1), (status, unstopped, free)
