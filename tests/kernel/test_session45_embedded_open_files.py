"""A run on one kernel in the caller's process (`run`, `run_async`) that
fails or is cancelled closes the files its steps hold open (session 45).

The run's operators are a reference cycle: `to_files`' hidden file of the
epoch and `from_files`' descriptors stayed open in the host process until a
full collection found them (with a ResourceWarning), and for ever in a
process that turned the collector off. Each test runs with the collector
off, so that only the run itself can have closed them."""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import time

import pytest

from kernel import Dataflow, OperatorError, run, run_async


@pytest.fixture
def collector_off():
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
        gc.collect()  # (what a test left, before the next one looks)


def _open_under(directory) -> list[str]:
    """The paths under `directory` this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


def test_a_cancelled_run_async_closes_the_hidden_file_to_files_was_writing(tmp_path, collector_off):
    out = tmp_path / "out"
    flow = Dataflow("endless")
    flow.from_iterable(itertools.count(), batch_size=100).to_files(out)

    async def main():
        task = asyncio.create_task(run_async(flow))
        deadline = time.monotonic() + 10
        while not _open_under(out):  # the epoch's hidden file is being written
            assert time.monotonic() < deadline, "to_files never opened its file"
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _open_under(tmp_path) == []
    assert [name for name in os.listdir(out) if not name.startswith(".")] == []  # nothing published


def test_a_failed_run_closes_the_files_it_read_and_wrote(tmp_path, collector_off):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "numbers.txt").write_text("".join(f"{i}\n" for i in range(20_000)))
    flow = Dataflow("fails")
    numbers = flow.from_files(str(tmp_path / "in" / "*.txt"), batch_size=100).map(int)
    numbers.to_files(tmp_path / "out")
    numbers.map(lambda n: 1 // (n - 10_000), name="inverse").collect()
    with pytest.raises(OperatorError, match=r"(?s)inverse \(step \d+\)'.*on record: 10000"):
        run(flow)
    assert _open_under(tmp_path) == []
