"""What a kernel process printed reaches its stdout before the launcher
hears its answer. A kernel flushes what `print()` buffered as it leaves
(it leaves by `os._exit`, which flushes nothing); the launcher, once every
kernel has answered, kills those not yet gone. A kernel that answered
before flushing could be killed with its last lines still in its buffer:
a `sink(print)` on two kernels, its stdout a pipe, lost them.

The test makes the flush slow (a stream whose flush takes a while before
it writes), so a launcher that stops a kernel between its answer and its
flush loses that kernel's lines every time."""

from __future__ import annotations

import os
import sys
import time

import pytest

from kernel import Dataflow, KernelError, run

pytestmark = pytest.mark.usefixtures("no_leaks")

SLOW_FLUSH = 0.1  # seconds a flush takes before it writes


class _SlowToFlush:
    """A text stream holding what is written until `flush`, which takes
    SLOW_FLUSH, then writes it all to `fd` (inherited by the kernels)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.held: list[str] = []

    def write(self, text: str) -> int:
        self.held.append(text)
        return len(text)

    def flush(self) -> None:
        if self.held:
            time.sleep(SLOW_FLUSH)
            os.write(self.fd, "".join(self.held).encode())
            self.held.clear()


def _lines_printed_by_kernels(tmp_path, monkeypatch, flow, cores: int = 2):
    path = tmp_path / "stdout.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    error = None
    try:
        monkeypatch.setattr(sys, "stdout", _SlowToFlush(fd))
        try:
            run(flow, cores=cores)
        except KernelError as exc:
            error = exc
        monkeypatch.undo()
    finally:
        os.close(fd)
    return path.read_text().splitlines(), error


def test_a_kernels_printed_lines_are_all_written_though_its_flush_is_slow(tmp_path, monkeypatch):
    flow = Dataflow("printing")
    flow.from_iterable(range(200)).sink(print)
    lines, error = _lines_printed_by_kernels(tmp_path, monkeypatch, flow)
    assert error is None
    assert sorted(map(int, lines)) == list(range(200))


def _fails_at_150(n: int) -> int:
    if n == 150:
        raise ValueError("bad record")
    return n


def test_what_a_failing_kernel_printed_before_its_error_is_written(tmp_path, monkeypatch):
    """The kernel that fails: the lines it printed before the error are
    out before the launcher hears of it (and stops every kernel)."""
    flow = Dataflow("printing then failing")
    flow.from_iterable(range(200), batch_size=10).map(_fails_at_150).sink(print)
    lines, error = _lines_printed_by_kernels(tmp_path, monkeypatch, flow, cores=1 + 1)
    assert error is not None and "bad record" in str(error)
    printed = set(map(int, lines))
    # record 150 is kernel 0's (i % 2); its batches of 10 records before 150's
    # were printed before it failed
    assert {n for n in range(0, 140, 2)} <= printed
