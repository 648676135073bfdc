"""`from_iterable` over a live stream (operators/_live_input.py): two
sources of a run over one stream, the run failing early. Each waits with
a deadline: a hang fails its test."""

from __future__ import annotations

import functools
import os
import socket
import threading
import time

import pytest
from _live_streams import DEADLINE

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


def _readers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.endswith(" reader")]


def _closes_within(stream, seconds: float) -> bool:
    """Whether `stream.close()`, on a thread, returns within `seconds`."""
    closed = threading.Event()
    threading.Thread(target=lambda: (stream.close(), closed.set()), daemon=True).start()
    return closed.wait(seconds)


@pytest.mark.parametrize("kind", ["pipe", "socket"])
def test_a_stream_whose_pending_read_the_caller_ended_closes_at_once_after_a_run_that_failed(kind):
    """What the README tells a caller closing a live stream after a run
    that ended early: the reader thread's pending read holds the file
    object's lock, so a close waits for it; ended first (the pipe's write
    end closed, the socket shut down for reading), the close returns at
    once, and the reader's thread ends."""
    before = set(_readers())
    if kind == "pipe":
        read, write = os.pipe()
        stream = os.fdopen(read)
        end_the_read = functools.partial(os.close, write)
    else:
        ours, theirs = socket.socketpair()
        stream = ours.makefile("r")
        end_the_read = functools.partial(ours.shutdown, socket.SHUT_RD)
    flow = Dataflow("early")
    flow.from_iterable(stream).union(flow.from_iterable([0]).map(_fails)).collect()
    with pytest.raises(Exception, match="the run fails here"):
        run(flow)
    end_the_read()
    assert _closes_within(stream, DEADLINE)
    deadline = time.monotonic() + DEADLINE
    while set(_readers()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(_readers()) - before
    if kind == "socket":
        ours.close()
        theirs.close()
