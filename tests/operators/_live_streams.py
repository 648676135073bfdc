"""What the tests of `from_iterable` over a live stream share: a pipe
written by a thread, an operator that tells the test of each record, a
run cancelled while its reader waited, and runs over connections' file
objects."""

import asyncio
import os
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from kernel import Dataflow, Operator, run, run_async

DEADLINE = 10.0  # seconds: far beyond what each step takes (a fraction of a second)


class Answers(Operator):
    """Tells the test of each record as it arrives (one kernel, in the caller's process)."""

    def __init__(self, seen: queue.Queue) -> None:
        self.seen = seen

    def on_batch(self, port, batch):
        for record in batch:
            self.seen.put(record)
        self.emit(batch)


@contextmanager
def piped(write: Callable, encoding: str | None = None) -> Iterator:
    """A pipe's read end as a text stream, while a thread of the test calls
    `write(out)` with its write end (closed after); the thread is joined
    once the stream is closed."""
    read, write_end = os.pipe()

    def writer():
        with os.fdopen(write_end, "w", encoding=encoding) as out:
            write(out)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with os.fdopen(read, encoding=encoding) as stream:
            yield stream
    finally:
        thread.join()


async def cancelled_while_reading(stream, out) -> None:
    """A run over `stream` that handed on "0" (written to `out`) and was
    then cancelled while its reader waited in a read; then "1", "2", "3"
    are written and `out` is closed."""
    seen: queue.Queue = queue.Queue()
    first = Dataflow("first")
    first.from_iterable(stream).map(str.strip).apply(lambda: Answers(seen)).collect()
    running = asyncio.ensure_future(run_async(first))
    out.write("0\n")
    out.flush()
    assert await asyncio.to_thread(seen.get, timeout=DEADLINE) == "0"
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    out.write("1\n2\n3\n")
    out.close()


def run_over_connection(connection, state_dir=None) -> list[int]:
    """A run over `connection`'s file object (`makefile("r")`, closed
    after the run, the connection kept open): the ints it read."""
    got: list[int] = []
    with connection.makefile("r") as stream:
        flow = Dataflow("lines")
        flow.from_iterable(stream, name="lines in").map(int).sink(got.append)
        run(flow, state_dir=state_dir)
    return got


def connection_with(lines: str):
    """One end of a socket pair whose other end sent `lines` and closed."""
    ours, theirs = socket.socketpair()
    with theirs:
        theirs.sendall(lines.encode())
    return ours
