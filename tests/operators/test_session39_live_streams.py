"""`from_iterable` over a live stream (operators/_live_input.py): two
sources of a run over one stream, the run failing early. Each waits with
a deadline: a hang fails its test."""

from __future__ import annotations

import os

import pytest

from kernel import Dataflow, run


def _fails(_record):
    raise ValueError("the run fails here")


@pytest.mark.parametrize("sources_after", [1, 2])
def test_two_sources_of_a_run_failing_early_leave_every_line_they_did_not_hand_on_to_the_next_run(
        sources_after):
    """Each source had a reader of its own; the run failing, both were
    stopped, and only one could be left over for the next run over the
    stream: the other's lines (a chunk, up to a few thousand) were lost.
    Now the sources of a run read a stream with one reader, and what
    neither handed on goes to the next run, in the stream's order."""
    total = 5_000
    handed_on: list[int] = []

    def seen(line):
        handed_on.append(int(line))
        return line

    read, write = os.pipe()
    with os.fdopen(read) as stream, os.fdopen(write, "w") as out:
        out.write("".join(f"{i}\n" for i in range(3_000)))  # (in the pipe as the run starts)
        out.flush()
        first = Dataflow("first")
        one = first.from_iterable(stream).map(seen)
        other = first.from_iterable(stream).map(seen)
        one.union(other).union(first.from_iterable([0]).map(_fails)).collect()
        with pytest.raises(Exception, match="the run fails here"):
            run(first)
        out.write("".join(f"{i}\n" for i in range(3_000, total)))
        out.close()
        second = Dataflow("second")
        lines = [second.from_iterable(stream).map(int) for _ in range(sources_after)]
        rest = (lines[0] if sources_after == 1 else lines[0].union(lines[1])).collect()
        run(second)
    assert sorted(handed_on + rest.items) == list(range(total))
    if sources_after == 1:
        assert rest.items == sorted(rest.items)
