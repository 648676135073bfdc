"""Session 40: what a job process started and left running (a user's
subprocess: a Popen not waited for, `os.system("... &")`) ends with the
job process, and so never outlives the executor's close(). A job process
that ended just before close() (its exit not yet seen) was left out of the
stops, and nothing killed its process group: its children ran on after the
executor had stopped; as did those of any job process that ended on its own.

In this process: one executor, never connected (its id set as a register
would), a job process whose step starts `sleep 60` (in its process group)
and which then completes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time

from kernel.system._executor import ExecutorDaemon
from kernel.system._wire import file_fields
from tests.system.test_session39_exits_while_away_review import _ended

# starts `sleep 60` (in its group, or in a session of its own), its pid in {pid_file}, then completes
LEAVING = """\
import os
import subprocess
from kernel import Dataflow

def step(n):
    child = subprocess.Popen(["sleep", "60"], start_new_session={own_session})
    with open({pid_file!r} + ".partial", "w") as f:
        f.write(str(child.pid))
    os.replace({pid_file!r} + ".partial", {pid_file!r})
    return n

flow = Dataflow("leaving")
flow.from_iterable(range(1)).map(step).sink(id)
"""


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, waiting for its new parent to reap it, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


async def _started(executor: ExecutorDaemon, tmp_path, job: str = "job-1", own_session: bool = False):
    pid_file = tmp_path / f"{job}.pid"
    content = LEAVING.format(pid_file=str(pid_file), own_session=own_session).encode()
    await executor._request("start", {
        "job": job, "attempt": 1, "process": 0, "flow": "flow", "filename": "leaving.py",
        **file_fields(content), "digest": hashlib.sha256(content).hexdigest(), "cores": 1})
    return executor.processes[job, 1, 0], pid_file


async def _completed(entry, pid_file) -> int:
    """The pid of the child a job process left, once that process has completed (code 0)."""
    await asyncio.wait_for(asyncio.shield(entry.followed), 60)
    assert entry.code == 0, entry.log_path.read_text()
    return int(pid_file.read_text())


async def _closed(executor: ExecutorDaemon, child: int | None) -> None:
    """The executor closed, and the job's child, if it runs on (the test failed), killed."""
    await executor.close()
    if child is not None and _alive(child):
        os.kill(child, signal.SIGKILL)


def _executor(tmp_path) -> ExecutorDaemon:
    executor = ExecutorDaemon(("127.0.0.1", 9), b"children-secret", 1, tmp_path / "executor",
                              host="127.0.0.1")
    executor._remember({"id": "e1"})
    return executor


async def test_the_children_of_a_job_process_that_ended_just_before_close_do_not_outlive_it(tmp_path):
    executor = _executor(tmp_path)
    child = None
    try:
        entry, pid_file = await _started(executor, tmp_path)
        _ended(entry.proc.pid)  # (the loop held: its exit not yet seen when close() begins)
        child = int(pid_file.read_text())
        assert entry.code is None and _alive(child)
        await executor.close()
        assert entry.code == 0, entry.log_path.read_text()
        assert _gone(child), f"the job's child {child} runs on after the executor's close()"
    finally:
        await _closed(executor, child)


async def test_the_children_of_a_job_process_end_with_it(tmp_path):
    executor = _executor(tmp_path)
    child = None
    try:
        entry, pid_file = await _started(executor, tmp_path)
        child = await _completed(entry, pid_file)
        assert _gone(child), f"the job's child {child} runs on after the job process ended"
    finally:
        await _closed(executor, child)
