"""Session 41: what an executor leaves behind. Its workdir's lock
(`executor.lock`, held open from its start) was not closed by close(): an
app that ran an executor and closed it held the descriptor for as long as
it ran on, and the workdir stayed locked to a next executor of its own. And
executor.json is written whole or not at all (`executor.partial`, then a
rename), but a write cut short by a full disk left an empty
`executor.partial` in the workdir, for good.

In this process: executors never connected (the id set as a register
would), one on a real full disk (a 192 KiB tmpfs, filled) stopping a job
process it has no coordinator to tell of."""

from __future__ import annotations

import asyncio
import json
import os

from kernel.system._executor import ExecutorDaemon, WorkdirInUse
from tests.system.test_session40_full_disk_notes import _fill, _start


def _lock_descriptors(workdir) -> list[int]:
    """This process's descriptors open on `workdir`'s executor.lock."""
    lock = str(workdir / "executor.lock")
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == lock:
                found.append(int(fd))
        except OSError:  # (the listing's own descriptor, closed since)
            pass
    return found


async def test_close_lets_the_workdirs_lock_go(tmp_path):
    workdir = (tmp_path / "executor").resolve()
    executor = ExecutorDaemon(("127.0.0.1", 9), b"leftover-secret", 1, workdir, host="127.0.0.1")
    assert len(_lock_descriptors(workdir)) == 1
    try:
        ExecutorDaemon(("127.0.0.1", 9), b"leftover-secret", 1, workdir, host="127.0.0.1")
        raise AssertionError("a second executor was let in while the first ran")
    except WorkdirInUse:
        pass
    await executor.close()
    assert _lock_descriptors(workdir) == []
    again = ExecutorDaemon(("127.0.0.1", 9), b"leftover-secret", 1, workdir, host="127.0.0.1")
    try:
        assert len(_lock_descriptors(workdir)) == 1
        assert (workdir / "executor.lock").read_text() == str(os.getpid())
    finally:
        await again.close()
    await executor.close()  # (twice: nothing more to let go)
    assert _lock_descriptors(workdir) == []


async def test_a_note_that_a_full_disk_cuts_short_leaves_no_partial_file(tmp_path, tiny_disk):
    workdir = tiny_disk / "executor"
    workdir.mkdir()
    (workdir / "executor.json").write_text(json.dumps({"id": "e1"}))
    executor = ExecutorDaemon(("127.0.0.1", 9), b"full-secret", 1, workdir, host="127.0.0.1")
    try:
        await _start(executor, "job-1", tmp_path / "never")
        _fill(tiny_disk)
        # (its stop noted for the next executor on the workdir: `_note_stopped`, which cannot write)
        await asyncio.wait_for(executor.close(), 60)
        assert executor._record["stopped"] == [["job-1", 1, 0]]  # (in memory only)
        assert sorted(p.name for p in workdir.iterdir()) == [
            "executor.json", "executor.lock", "jobs", "logs", "pipelines"]
        assert json.loads((workdir / "executor.json").read_text()) == {"id": "e1"}
    finally:
        await executor.close()


async def test_a_pipeline_that_a_full_disk_cuts_short_leaves_no_partial_file(tmp_path, tiny_disk):
    workdir = tiny_disk / "executor"
    workdir.mkdir()
    executor = ExecutorDaemon(("127.0.0.1", 9), b"full-secret", 1, workdir, host="127.0.0.1")
    executor._remember({"id": "e1"})
    try:
        _fill(tiny_disk)
        try:
            await _start(executor, "job-1", tmp_path / "never")
            raise AssertionError("a start with no room for its pipeline went on")
        except OSError:
            pass
        assert [p.name for p in (workdir / "pipelines").rglob("*") if p.is_file()] == []
        assert executor.processes == {}
    finally:
        await executor.close()
