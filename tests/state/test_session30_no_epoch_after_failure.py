"""`to_files` never closes an epoch whose file is short of what it was
given (session 30): Python's buffer drops what a failed write could not
write, so the next flush and fsync "succeed". The run-level fix and its
tests: tests/state/test_session30_failure_exactly_once.py. Also the
exactly-once check those tests use (tests/_crash_runs.assert_each_once)."""

from __future__ import annotations

import errno
import os
from types import SimpleNamespace

import pytest

from kernel import KernelError
from kernel.dataflow._errors import OperatorError
from operators._files import ToFiles
from tests._crash_runs import assert_each_once


def _opened_sink(directory) -> ToFiles:
    sink = ToFiles(directory)
    sink.name = "to_files(out)"
    sink.open(SimpleNamespace(index=0, peers=1, snapshots=True))
    return sink


def test_to_files_never_closes_an_epoch_whose_write_failed(tmp_path):
    """Python's buffer drops what a failed write could not write: the next
    flush and fsync "succeed" on a file without it. Whatever calls on_epoch
    after the failure, the epoch does not close as if its file were whole."""
    sink = _opened_sink(tmp_path / "out")
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
    sink = _opened_sink(tmp_path / "out")
    with pytest.raises(OperatorError, match="UnicodeEncodeError"):
        sink.on_batch(0, ["a", "b", "c", "\udcff"])
    with pytest.raises(KernelError, match="UnicodeEncodeError"):
        sink.on_epoch(1)
    sink._file.close()
