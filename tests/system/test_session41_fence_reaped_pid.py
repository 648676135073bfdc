"""Session 41: the executor's fence (`_fence`: cut off from the
coordinator for FENCE_SHARE of its timeout, it SIGKILLs its job processes'
groups) passes over a job process that has ended, its exit not yet seen by
the event loop (reaped already by asyncio's watcher thread): its pid may be
a newcomer's, which leads a group of its own (a `setsid` daemon, another
executor's job process), and it was killed, a process of no job's. That
guard (`_has_ended`, as `_stop_one`'s) had no test.

In this process: one executor, never connected (its id set as a register
would), a job process that completes leaving nothing, its pid given, while
the event loop is held (its exit not yet seen), to a process that leads a
session of its own (the kernel's `ns_last_pid`), then fenced at that
moment (`_kill_fenced`, the fence's kill)."""

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


@pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK), reason="needs a writable ns_last_pid (root)")
async def test_the_fence_does_not_kill_the_process_given_the_pid_of_a_job_process_reaped_already(tmp_path):
    executor: ExecutorDaemon = _executor(tmp_path)
    executor._fence_after = 4.0  # (as a register's reply sets it)
    newcomers: list = []
    try:
        _, entry, newcomer = await a_newcomer_given_its_pid(executor, newcomers)
        pid = newcomer.pid
        assert entry.code is None and entry.proc.returncode is None
        executor._kill_fenced([entry])  # (the loop still held: its exit unseen)
        await asyncio.wait_for(asyncio.shield(entry.followed), 60)
        assert entry.code == 0, entry.log_path.read_text()
        assert entry.fenced
        a_moment_to_die(newcomer)
        assert newcomer.poll() is None, f"process {pid}, no job's, was killed (exit {newcomer.returncode})"
    finally:
        await executor.close()
        end_newcomers(newcomers)
