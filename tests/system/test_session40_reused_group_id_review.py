"""Session 40 review: the executor SIGKILLs a job process's process group
once it sees the process's exit (`_end_group` in `_follow`), after asyncio's
watcher has reaped it. Its pid is given to no other process while its group
has members; but a job process that left nothing running leaves an empty
group, and its pid may then be another process's: one that leads a group
of its own (a `setsid` daemon, another executor's job process) was
SIGKILLed, a process of no job's. A pid held by a process now is a
newcomer's, the group of the job's empty: nothing is killed.

In this process: one executor, never connected (its id set as a register
would), a job process that completes leaving nothing, its pid given, while
the event loop is held (its exit not yet seen), to a process that leads a
session of its own (the kernel's `ns_last_pid`: the next pid made)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time

import pytest

from kernel.system._executor import ExecutorDaemon
from tests.system.test_session40_job_children_end import _executor

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
ATTEMPTS = 5
# seconds a process sent SIGKILL takes to end (at most: a moment)
KILLED_WITHIN = 0.2

COMPLETING = """\
from kernel import Dataflow

flow = Dataflow("completing")
flow.from_iterable(range(1)).map(lambda n: n).sink(id)
"""


def _reaped(pid: int, timeout: float = 60.0) -> None:
    """Until asyncio's watcher thread has reaped process `pid` (the event loop held)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        assert time.monotonic() < deadline, "the job process was not reaped"
        time.sleep(0.005)


async def a_newcomer_given_its_pid(executor: ExecutorDaemon, newcomers: list) -> tuple:
    """A job process of `executor` that completes, reaped (by asyncio's
    watcher thread) while the loop is held, its exit not yet seen by
    `_follow`; and a process that leads a session of its own given its pid
    (`ns_last_pid`), kept in `newcomers` for the test to end. `(job, entry,
    newcomer)`. Another process may take the pid between the write and the
    Popen, with the suite's other worker beside it: a job again, a few times
    at most."""
    import hashlib

    from kernel.system._wire import file_fields

    content = COMPLETING.encode()
    for attempt in range(1, ATTEMPTS + 1):
        job = f"job-{attempt}"
        await executor._request("start", {
            "job": job, "attempt": 1, "process": 0, "flow": "flow", "filename": "completing.py",
            **file_fields(content), "digest": hashlib.sha256(content).hexdigest(), "cores": 1})
        entry = executor.processes[job, 1, 0]
        pid = entry.proc.pid
        _reaped(pid)  # (the loop held: its exit not yet seen, `returncode` None)
        with open(NS_LAST_PID, "w") as f:
            f.write(str(pid - 1))
        newcomer = subprocess.Popen(["sleep", "60"], start_new_session=True)
        newcomers.append(newcomer)
        if newcomer.pid == pid:
            return job, entry, newcomer
        newcomer.kill()
        newcomer.wait()
        await asyncio.wait_for(asyncio.shield(entry.followed), 60)
    pytest.fail(f"other processes took the job process's pid first {ATTEMPTS} times")


def end_newcomers(newcomers: list) -> None:
    for newcomer in newcomers:
        newcomer.kill()
        newcomer.wait()


def a_moment_to_die(newcomer, within: float = KILLED_WITHIN) -> None:
    """A signal sent to `newcomer` is acted on at its next run: a moment
    later. Waits for its end for `within` s at most (it may not come)."""
    try:
        newcomer.wait(within)
    except subprocess.TimeoutExpired:
        pass


@pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK), reason="needs a writable ns_last_pid (root)")
async def test_a_process_given_the_pid_of_a_job_process_that_left_nothing_is_not_killed(tmp_path):
    executor: ExecutorDaemon = _executor(tmp_path)
    newcomers: list = []
    try:
        _, entry, newcomer = await a_newcomer_given_its_pid(executor, newcomers)
        pid = newcomer.pid
        await asyncio.wait_for(asyncio.shield(entry.followed), 60)
        assert entry.code == 0, entry.log_path.read_text()
        a_moment_to_die(newcomer)
        assert newcomer.poll() is None, f"process {pid}, no job's, was killed (exit {newcomer.returncode})"
    finally:
        await executor.close()
        end_newcomers(newcomers)
