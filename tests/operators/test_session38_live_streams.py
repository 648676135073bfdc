"""`from_iterable` over a live stream (operators/_live_input.py): a run
that ends before its input stops its reader thread, and the thread does
not outlive its read. Each waits with a deadline: a hang fails its test."""

from __future__ import annotations

import os
import threading
import time

import pytest
from _live_streams import DEADLINE

from kernel import Dataflow, Operator, run


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


def _readers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.endswith(" reader")]


def test_reader_threads_of_runs_that_ended_early_end_with_their_read():
    """A run that ends before its input leaves its reader thread waiting in
    a read, for a later run over the same stream to take over. Once that
    read returned, the thread waited for such a run for ever, and kept what
    it read: a service running flows over streams, some ending early, kept
    a thread and a few batches of records of each. Now the thread ends with
    its read, and once the caller closes the stream, no reader keeps it."""
    from kernel.operators import _live_input

    before = set(_readers())
    for _ in range(5):
        read, write = os.pipe()
        with os.fdopen(read) as stream, os.fdopen(write, "w") as out:
            flow = Dataflow("early")
            flow.from_iterable(stream).union(flow.from_iterable([0]).map(_fails)).collect()
            with pytest.raises(Exception, match="the run fails here"):
                run(flow)
            out.write("line\n" * 5_000)  # (the reader's read returns: a chunk of these)
            out.flush()
    deadline = time.monotonic() + DEADLINE
    while set(_readers()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(_readers()) - before
    read, write = os.pipe()
    os.close(write)
    with os.fdopen(read) as stream:  # (a run over another stream: the closed ones' readers are dropped)
        flow = Dataflow("another")
        flow.from_iterable(stream).collect()
        run(flow)
    kept = [reader._stream() for reader in _live_input._left_over.values()]  # (held weakly)
    assert not [stream for stream in kept if stream is None or stream.closed]


def _a_run_ending_early_over(read: int) -> None:
    """A run over the pipe's read end `read` that fails early, its stream
    dropped unclosed (with the flow) when this returns."""
    stream = os.fdopen(read)
    flow = Dataflow("dropped")
    flow.from_iterable(stream).union(flow.from_iterable([0]).map(_fails)).collect()
    try:
        run(flow)
    except Exception as exc:
        assert "the run fails here" in str(exc)


def test_a_stream_dropped_unclosed_after_a_run_that_ended_early_is_closed_once_collected():
    """The reader left over for a later run held the stream (through its
    run's source and kernel), and so its descriptor, for as long as the
    process ran: a service dropping a connection's file after a run that
    ended early never closed the connection. Now a reader whose stream is
    gone keeps nothing, and the stream's finalizer closes it."""
    import gc

    before = set(_readers())
    read, write = os.pipe()
    try:
        _a_run_ending_early_over(read)
        os.write(write, b"line\n" * 5_000)  # (the reader's read returns, and its thread ends)
        deadline = time.monotonic() + DEADLINE
        while set(_readers()) - before and time.monotonic() < deadline:
            time.sleep(0.01)
        gc.collect()
        with pytest.raises(BrokenPipeError):  # (nobody holds the read end any more)
            os.write(write, b"more\n")
    finally:
        os.close(write)



def test_a_run_failing_once_its_reader_read_to_the_end_leaves_what_it_read_to_the_next_run():
    """A reader that had read its input to the end ended its run's task
    there, not once the source had taken what it read: a run failing (or
    cancelled) after that never stopped the reader, which was not left for
    the next run, and the lines it had read but not handed on were lost
    (the next run read the end at once)."""
    import asyncio

    before = set(_readers())
    read, write = os.pipe()
    os.write(write, b"".join(b"%d\n" % i for i in range(1_000)))
    os.close(write)
    failed_at = []

    def fails_once_read_to_the_end(line):
        if line == "0\n":  # (the thread reads all 1,000 lines, and ends, meanwhile)
            deadline = time.monotonic() + DEADLINE
            while set(_readers()) - before and time.monotonic() < deadline:
                time.sleep(0.005)
            return line
        reading = [task for task in asyncio.all_tasks() if task.get_name().endswith(" reader")]
        if not reading or line == "900\n":  # (its task is done, or at 900 where it is not)
            failed_at.append(int(line))
            raise ValueError("the run fails here")
        return line

    with os.fdopen(read) as stream:
        first = Dataflow("first")
        first.from_iterable(stream, batch_size=1).map(fails_once_read_to_the_end).collect()
        with pytest.raises(Exception, match="the run fails here"):
            run(first)
        second = Dataflow("second")
        rest = second.from_iterable(stream).map(int).collect()
        run(second)
    assert rest.items == list(range(failed_at[0] + 1, 1_000)), (failed_at, rest.items[:3])


def test_what_a_reader_of_the_caller_read_to_the_end_is_handed_on_once_on_one_kernel():
    """A run on several kernels took over, in kernel 0's process, a reader
    the caller's failed run had left after it read the input to its end,
    while the caller kept its own copy: the next run took that over too,
    and every line it held came out twice. It is refused (as where the
    reader still reads), and the run on one kernel gets each line once."""
    before = set(_readers())
    read, write = os.pipe()
    os.write(write, b"".join(b"%d\n" % i for i in range(1_000)))
    os.close(write)

    def fails_once_read_to_the_end(line):
        deadline = time.monotonic() + DEADLINE
        while set(_readers()) - before and time.monotonic() < deadline:
            time.sleep(0.005)
        raise ValueError(f"the run fails here, at {line.strip()}")

    with os.fdopen(read) as stream:
        first = Dataflow("first")
        first.from_iterable(stream, batch_size=1).map(fails_once_read_to_the_end).collect()
        with pytest.raises(Exception, match="the run fails here, at 0"):
            run(first)
        on_two = Dataflow("on two")
        on_two.from_iterable(stream).collect()
        with pytest.raises(Exception, match="an earlier run of this process over the same input ended"):
            run(on_two, cores=2)
        on_one = Dataflow("on one")
        rest = on_one.from_iterable(stream).map(int).collect()
        run(on_one)
    assert rest.items == list(range(1, 1_000))


class _FailsToOpen(Operator):
    def open(self, context):
        raise ValueError("the run fails here, opening")

    def on_batch(self, port, batch):
        self.emit(batch)


def test_a_run_failing_before_its_live_source_reads_leaves_the_reader_to_the_next_run():
    """The source took the reader an earlier run left at its open(), and
    a run failing before its first poll (a later step's open() failing)
    dropped it: the line its thread had read was lost (or, a thread still
    waiting in its read, the next line that came). It takes the reader as
    it starts reading now."""
    read, write = os.pipe()
    with os.fdopen(read) as stream, os.fdopen(write, "w") as out:
        first = Dataflow("first")
        first.from_iterable(stream).union(first.from_iterable([0]).map(_fails)).collect()
        with pytest.raises(Exception, match="the run fails here"):
            run(first)
        out.write("".join(f"{i}\n" for i in range(100)))  # (the first run's thread reads "0")
        out.close()
        second = Dataflow("second")
        second.from_iterable(stream).apply(_FailsToOpen).collect()
        with pytest.raises(Exception, match="the run fails here, opening"):
            run(second)
        third = Dataflow("third")
        rest = third.from_iterable(stream).map(int).collect()
        run(third)
    assert rest.items == list(range(100))
