"""Session 41 (review): job processes start one at a time (`_spawning`),
so the starts that come together (a coordinator placing many jobs at once)
wait their turn. close() (a leave's, or an app's that ran an executor)
stopped the processes it found: those of the starts still waiting their
turn, or in the middle of theirs, were started after, and ran on, never
stopped (10 starts begun, then close(): 10 job processes running after it,
for as long as an app ran; after a leave, the coordinator moved their jobs
elsewhere beside them). close() now lets the starts in flight end first,
and stops their processes with the rest; a start after it is refused.

In this process: one executor, never connected (its id set as a register
would)."""

from __future__ import annotations

import asyncio
import os
import signal

from kernel.system._executor import ExecutorDaemon
from kernel.system._wire import RequestError
from tests.system.test_session40_full_disk_notes import _start
from tests.system.test_session40_job_children_end import _executor

STARTS = 6


async def test_close_stops_the_processes_of_the_starts_in_flight(tmp_path):
    executor: ExecutorDaemon = _executor(tmp_path)
    flag = tmp_path / "never"
    starts = [asyncio.ensure_future(_start(executor, f"job-{n}", flag)) for n in range(1, STARTS + 1)]
    try:
        await asyncio.sleep(0)  # (each start's first step: one making its process, the rest queued)
        await asyncio.wait_for(executor.close(), 60)
        await asyncio.wait_for(asyncio.gather(*starts), 60)  # (each answered: started)
        running = [key for key, p in executor.processes.items() if p.proc.returncode is None]
        assert running == [], f"left running after close(): {running}"
        assert len(executor.processes) == STARTS
        try:
            await _start(executor, "job-late", flag)
            raise AssertionError("a start after close() was let in")
        except RequestError as exc:
            assert str(exc) == "executor e1 is stopping"
    finally:
        await asyncio.gather(*starts, return_exceptions=True)
        for entry in executor.processes.values():
            try:
                os.killpg(entry.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await entry.proc.wait()
        await executor.close()
