"""Session 41: a job process's pidfd is opened once it has started
(`_pidfd`), to tell whether it has ended by something surer than its pid
(`_has_ended`). A process that ended at once could be reaped (by asyncio's
watcher thread) before that; its pid then went to the next process made,
and where that was this executor's next job process, started meanwhile,
the pidfd was that one's: the first, ended, was taken for running, and its
stop (`_stop_one`) sent SIGINT to the other job's process group, which was
interrupted. Job processes are now started one at a time, each with its
pidfd: a pid taken since is then no child of this executor's, or it is free
(`JobProcess.gone`).

In this process: one executor, never connected (its id set as a register
would); the start of a job process that completes at once held (asyncio's
`create_subprocess_exec`, wrapped) until it is reaped, its pid then made the
next (the kernel's `ns_last_pid`), and a second job's start begun, given
the loop for a turn; then the first job stopped, before the loop
has seen its exit."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from kernel.system._executor import ExecutorDaemon
from kernel.system._wire import file_fields
from tests.system.test_session40_full_disk_notes import WAITING
from tests.system.test_session40_job_children_end import _executor
from tests.system.test_session40_reused_group_id_review import ATTEMPTS, COMPLETING, NS_LAST_PID, _reaped


def _request(job: str, text: str) -> dict:
    content = text.encode()
    return {"job": job, "attempt": 1, "process": 0, "flow": "flow", "filename": f"{job}.py",
            **file_fields(content), "digest": hashlib.sha256(content).hexdigest(), "cores": 1}


@pytest.mark.skipif(not os.access(NS_LAST_PID, os.W_OK), reason="needs a writable ns_last_pid (root)")
async def test_a_job_process_reaped_before_its_pidfd_is_not_taken_for_the_next_one(tmp_path, monkeypatch):
    executor: ExecutorDaemon = _executor(tmp_path)
    real = asyncio.create_subprocess_exec
    held: dict = {}

    async def spawned(*args, **kwargs):
        proc = await real(*args, **kwargs)
        if held.pop("first", False):
            _reaped(proc.pid)  # (the loop held: its exit not yet seen)
            with open(NS_LAST_PID, "w") as f:
                f.write(str(proc.pid - 1))
            held["second"] = asyncio.ensure_future(executor._request("start", held["request"]))
            # (one turn of the loop: the second start's first step, which makes its process
            # where it may; the first's exit, told by the watcher's thread, is seen a turn later)
            await asyncio.sleep(0)
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawned)
    flag = tmp_path / "go"
    try:
        for attempt in range(1, ATTEMPTS + 1):
            first, second = f"job-{2 * attempt - 1}", f"job-{2 * attempt}"
            held.update(first=True, request=_request(second, WAITING.format(flag=str(flag))))
            await executor._request("start", _request(first, COMPLETING))
            entry = executor.processes[first, 1, 0]
            assert entry.proc.returncode is None  # (its exit not yet seen)
            await executor._stop_one(entry)  # (the coordinator's stop of it, as it ended)
            await held.pop("second")
            other = executor.processes[second, 1, 0]
            if other.proc.pid == entry.proc.pid:
                break
            await executor._stop_one(other)  # (its pid taken by another process first: again)
        else:
            pytest.fail(f"other processes took the job process's pid first {ATTEMPTS} times")
        assert entry.code == 0, entry.log_path.read_text()
        flag.touch()
        await asyncio.wait_for(asyncio.shield(other.followed), 60)
        log = other.log_path.read_text()
        assert other.code == 0, f"{second}'s process, given {first}'s pid, was stopped: {log}"
    finally:
        flag.touch()
        await executor.close()
