"""Session 41 (review): a job process whose pid was free already as its
pidfd was opened (reaped by asyncio's watcher thread before: `_pidfd`) is
`gone`, an ended process (`_has_ended`), its exit not yet seen by the loop.
No test guarded that: with `gone` always False, test_session41's
pid_reused_at_start and fence_reaped_pid passed all the same. Without it,
such a process is asked by its pid, and a child of this executor's given
that pid since was taken for it, running: the fence (`_kill_fenced`) SIGKILLed
that process's group.

In this process: one executor, never connected (its id set as a register
would); the start of a job process that completes at once held
(asyncio's `create_subprocess_exec`, wrapped) until it is reaped, its pidfd
then opened on a free pid; its pid then given (the kernel's `ns_last_pid`)
to a child of this process that leads a session of its own, and the job
fenced before the loop has seen its exit."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess

import pytest

from kernel.system._executor import ExecutorDaemon
from kernel.system._wire import file_fields
from tests.system.test_session40_job_children_end import _executor
from tests.system.test_session40_reused_group_id_review import (
    ATTEMPTS,
    COMPLETING,
    NS_LAST_PID,
    _reaped,
    a_moment_to_die,
    end_newcomers,
)


@pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK), reason="needs a writable ns_last_pid (root)")
async def test_a_job_process_gone_at_its_pidfd_is_not_taken_for_the_child_given_its_pid(tmp_path,
                                                                                      monkeypatch):
    executor: ExecutorDaemon = _executor(tmp_path)
    executor._fence_after = 4.0  # (as a register's reply sets it)
    real = asyncio.create_subprocess_exec

    async def reaped_at_once(*args, **kwargs):
        proc = await real(*args, **kwargs)
        _reaped(proc.pid)  # (the loop held: its exit not yet seen)
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", reaped_at_once)
    content = COMPLETING.encode()
    newcomers: list[subprocess.Popen] = []
    try:
        for attempt in range(1, ATTEMPTS + 1):
            job = f"job-{attempt}"
            await executor._request("start", {
                "job": job, "attempt": 1, "process": 0, "flow": "flow", "filename": "completing.py",
                **file_fields(content), "digest": hashlib.sha256(content).hexdigest(), "cores": 1})
            entry = executor.processes[job, 1, 0]
            assert entry.pidfd is None and entry.proc.returncode is None  # (its pid free: `gone`)
            with open(NS_LAST_PID, "w") as f:
                f.write(str(entry.proc.pid - 1))
            newcomer = subprocess.Popen(["sleep", "60"], start_new_session=True)
            newcomers.append(newcomer)
            if newcomer.pid == entry.proc.pid:
                break
            await asyncio.wait_for(asyncio.shield(entry.followed), 60)  # (another took it first: again)
        else:
            pytest.fail(f"other processes took the job process's pid first {ATTEMPTS} times")
        executor._kill_fenced([entry])  # (the loop still held: its exit unseen)
        a_moment_to_die(newcomer)
        assert newcomer.poll() is None, \
            f"process {newcomer.pid}, no job's, was killed (exit {newcomer.returncode})"
        await asyncio.wait_for(asyncio.shield(entry.followed), 60)
        assert entry.code == 0, entry.log_path.read_text()
    finally:
        await executor.close()
        end_newcomers(newcomers)
