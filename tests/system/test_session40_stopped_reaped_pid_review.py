"""Session 40 review (second round): the executor's stop of a job process
(`_stop_one`: the coordinator's "stop", a job cancelled or rescaled, or a
restart) signalled its process group by its pid, `killpg(pid, SIGINT)`, also
where asyncio's watcher thread had reaped the process already, its exit not
yet seen by the event loop (`returncode` still None). A job process that
left nothing running leaves an empty group, and its pid may then be another
process's: one that leads a group of its own (a `setsid` daemon, another
executor's job process) was sent SIGINT, a process of no job's, and ended.
Now a process that has ended (reaped or a zombie) is not signalled by its
pid; its group, ended after it (`_end_group`), is not a newcomer's.

In this process: one executor, never connected (its id set as a register
would), a job process that completes leaving nothing, its pid given, while
the event loop is held (its exit not yet seen), to a process that leads a
session of its own (the kernel's `ns_last_pid`: the next pid made), then the
coordinator's "stop" of that job."""

from __future__ import annotations

import asyncio
import os

import pytest

from kernel.system._executor import ExecutorDaemon
from tests.system.test_session40_job_children_end import _executor
from tests.system.test_session40_reused_group_id_review import (
    NS_LAST_PID,
    a_moment_to_die,
    a_newcomer_given_its_pid,
    end_newcomers,
)

# seconds a process sent SIGINT takes to end (at most: a moment)
SIGNALLED_WITHIN = 0.2


@pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK), reason="needs a writable ns_last_pid (root)")
async def test_a_stop_of_a_job_process_reaped_already_does_not_signal_the_process_given_its_pid(tmp_path):
    executor: ExecutorDaemon = _executor(tmp_path)
    newcomers: list = []
    try:
        job, entry, newcomer = await a_newcomer_given_its_pid(executor, newcomers)
        pid = newcomer.pid
        assert entry.code is None and entry.proc.returncode is None
        await asyncio.wait_for(executor._request("stop", {"job": job, "attempt": 1}), 60)
        await asyncio.wait_for(asyncio.shield(entry.followed), 60)
        assert entry.code == 0, entry.log_path.read_text()
        a_moment_to_die(newcomer, SIGNALLED_WITHIN)
        assert newcomer.poll() is None, f"process {pid}, no job's, was signalled (exit {newcomer.returncode})"
    finally:
        await executor.close()
        end_newcomers(newcomers)
