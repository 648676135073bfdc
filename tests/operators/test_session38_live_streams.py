"""`from_iterable` over a live stream (operators/_live_input.py): a run
that ends before its input stops its reader thread, and the thread does
not outlive its read. Each waits with a deadline: a hang fails its test."""

from __future__ import annotations

import os

import pytest

from kernel import Dataflow, run


def _fails(_record):
    raise ValueError("the run fails here")


def test_a_run_failing_as_its_reader_starts_leaves_the_stream_to_the_next_run():
    """Another source failing in the tick the live stream's reader started
    cancelled the reader's task before it ran, and the thread was never told
    the run had ended: it read on, up to a few batches, for nobody (and
    then waited for ever), and a later run over the same stream lost them."""
    read, write = os.pipe()
    with os.fdopen(read) as stream, os.fdopen(write, "w") as out:
        first = Dataflow("first")
        lines = first.from_iterable(stream).map(str.strip)
        lines.union(first.from_iterable([0]).map(_fails)).collect()
        with pytest.raises(Exception, match="the run fails here"):
            run(first)
        out.write("".join(f"{i}\n" for i in range(5_000)))
        out.close()
        second = Dataflow("second")
        rest = second.from_iterable(stream).map(int).collect()
        run(second)
    assert rest.items == list(range(5_000))
