"""No epoch completes after the run has failed (session 30).

A step that raises fails the kernel; the run's wait (`Kernel.join`) wakes on
the loop's next turn. The kernel's timers still fired before it: the epoch
timer among them injected a marker at the sources, whose snapshot held their
position after the batch that failed, and carried it on through the steps
that take batches directly (a chain): every step snapshotted, the store wrote
the epoch as complete, and the failed batch's records were in no step's
output and behind the source's position. A run resumed from it lost them.
Seen in CI: a full disk under `to_files` (its failed write's data dropped by
Python's buffer, the next epoch's flush "succeeded") lost 1,380 records of
40,000 (tests/state/test_durability_review.py, the full output disk, about
one run in sixty on a loaded machine). Here a step that raises after the
epoch timer is due makes it happen every time."""

from __future__ import annotations

import os
import time

import pytest

from kernel import Dataflow, KernelError, run
from tests._crash_runs import assert_each_once, visible_lines

pytestmark = pytest.mark.usefixtures("no_leaks")

N, FAIL_AT, INTERVAL = 3_000, 1_500, 0.02


def _failing(x):
    if x == FAIL_AT:
        # the epoch timer falls due while the step works, then the step raises
        deadline = time.perf_counter() + 5 * INTERVAL
        while time.perf_counter() < deadline:
            pass
        raise ValueError(f"no {x}")
    return x


def _flow(out, fn) -> Dataflow:
    flow = Dataflow("fails-then-resumes")
    flow.from_iterable(range(N), batch_size=10).map(fn).to_files(out)
    return flow


@pytest.mark.parametrize("cores", [1, 2])
def test_a_run_resumed_after_a_step_raised_publishes_every_record_once(tmp_path, cores):
    out, state = tmp_path / "out", tmp_path / "state"
    with pytest.raises(KernelError, match="no 1500"):
        # (a budget the spin does not spend: the marker goes on through the
        # chain at once, as after a step that fails quickly)
        run(_flow(out, _failing), cores=cores, state_dir=state, epoch_interval=INTERVAL, budget=1.0)
    run(_flow(out, lambda x: x), cores=cores, state_dir=state, epoch_interval=INTERVAL)
    assert_each_once(visible_lines(out), N)  # (it lost the failed batch, 1500-1509)


def test_to_files_never_closes_an_epoch_whose_write_failed(tmp_path):
    """Python's buffer drops what a failed write could not write: the next
    flush and fsync "succeed" on a file without it. Whatever calls on_epoch
    after the failure, the epoch does not close as if its file were whole."""
    import errno
    from types import SimpleNamespace

    from operators._files import ToFiles

    sink = ToFiles(tmp_path / "out")
    sink.name = "to_files(out)"
    sink.open(SimpleNamespace(index=0, peers=1, snapshots=True))
    sink.on_batch(0, list(range(10)))
    real = sink._file

    class Full:  # the file, with a disk that has just filled up
        name = real.name

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, attribute):
            return getattr(real, attribute)

    sink._file = Full()
    with pytest.raises(KernelError, match="No space left on device"):
        sink.on_batch(0, list(range(10, 20)))
    with pytest.raises(KernelError, match=r"cannot write .*\.part-k0-e00000001\.jsonl: No space left"):
        sink.on_epoch(1)
    real.close()


def test_the_exactly_once_check_says_what_was_lost_repeated_or_foreign_in_one_line():
    """(tests/_crash_runs.assert_each_once, which two dozen recovery tests
    use: CI showed only the tail of pytest's diff of two 40,000-key
    Counters, and none of what differed.)"""
    assert_each_once(reversed(range(40_000)), 40_000)
    records = [*range(40_000)]
    del records[26_233:27_613]
    records += [5, 5, "5", -1]
    with pytest.raises(AssertionError) as info:
        assert_each_once(records, 40_000)
    assert str(info.value) == (
        "of range(40000): 1380 lost [26233, 26234, 26235, 26236, 26237]"
        "..[27608, 27609, 27610, 27611, 27612], 1 repeated [(5, 3)], 2 others [('5', 1), (-1, 1)]")


def test_to_files_never_closes_an_epoch_whose_batch_was_written_in_part(tmp_path):
    """A record that is no UTF-8 (a lone surrogate) in a batch's second
    half: the first half is in the file already. The epoch must not close
    with half a batch in it, whatever calls on_epoch after the failure."""
    from types import SimpleNamespace

    from kernel.dataflow._errors import OperatorError
    from operators._files import ToFiles

    sink = ToFiles(tmp_path / "out")
    sink.name = "to_files(out)"
    sink.open(SimpleNamespace(index=0, peers=1, snapshots=True))
    with pytest.raises(OperatorError, match="UnicodeEncodeError"):
        sink.on_batch(0, ["a", "b", "c", "\udcff"])
    with pytest.raises(KernelError, match="UnicodeEncodeError"):
        sink.on_epoch(1)
    sink._file.close()
