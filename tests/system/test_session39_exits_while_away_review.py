"""Session 39 review of the exits an executor notes (`ended` in
executor.json): a job process that has failed on its own when the
executor is stopped (Ctrl-C, SIGTERM) while cut off from the coordinator,
its exit not yet seen (`_follow` had not run: the exit on its way through
the event loop), was counted by `close()` among those it stopped on
purpose (`stopped`): the next register moved its job free, and its error
was lost (the job ran again instead of failing with it). Its exit is now
noted as the exit it is, and `close()` waits for that note to be made,
rather than leaving it to a loop about to end.

In this process: one executor, never connected (its id set as a register
would), a job process whose step raises at once, and the event loop held
from the moment the process has ended until `close()` has begun, which is
when a SIGTERM handled in the same turn as the exit would call it."""

from __future__ import annotations

import hashlib
import json
import os
import time

from kernel.system._executor import ExecutorDaemon
from kernel.system._wire import file_fields

FAILING = """\
from kernel import Dataflow


def step(n):
    raise RuntimeError("told to fail")


flow = Dataflow("failing")
flow.from_iterable(range(10)).map(step).sink(id)
"""


def _ended(pid: int, timeout: float = 60.0) -> None:
    """Until process `pid` has exited (waitable, or reaped already by
    asyncio's watcher thread), the event loop held: its exit not yet seen
    by the executor. (Not /proc's state: a process whose first thread has
    ended, its others not yet, says Z there, and is not waitable.)"""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return
        except ChildProcessError:
            return
        assert time.monotonic() < deadline, "the job process did not end"
        time.sleep(0.005)


def cut_off_executor(tmp_path) -> ExecutorDaemon:
    """An executor registered once (its id noted), then cut off: no session."""
    executor = ExecutorDaemon(("127.0.0.1", 9), b"review-secret", 1, tmp_path / "executor", host="127.0.0.1")
    executor._remember({"id": "e1"})
    return executor


async def started_failing(executor: ExecutorDaemon):
    """Job job-1's process 0, started by `executor` from FAILING, once it has ended."""
    content = FAILING.encode()
    await executor._request("start", {
        "job": "job-1", "attempt": 1, "process": 0, "flow": "flow", "filename": "failing.py",
        **file_fields(content), "digest": hashlib.sha256(content).hexdigest(), "cores": 1})
    entry = executor.processes["job-1", 1, 0]
    _ended(entry.proc.pid)
    return entry


async def test_a_process_that_failed_just_before_the_stop_is_noted_as_failed_not_as_stopped(tmp_path):
    executor = cut_off_executor(tmp_path)
    try:
        entry = await started_failing(executor)
    finally:
        await executor.close()
    record = json.loads((tmp_path / "executor" / "executor.json").read_text())
    assert ["job-1", 1, 0] not in record.get("stopped", []), record
    ended = record.get("ended", [])
    assert [(e["job"], e["attempt"], e["process"]) for e in ended] == [("job-1", 1, 0)], record
    assert ended[0]["code"] == 1 and "told to fail" in (ended[0]["error"] or ""), record
    assert os.path.exists(entry.log_path)
