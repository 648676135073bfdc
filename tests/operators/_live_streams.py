"""What the tests of `from_iterable` over a live stream share: a pipe
written by a thread, an operator that tells the test of each record, a
run cancelled while its reader waited, runs over connections' file
objects, and a script run by a process of its own over a file given as
its standard input."""

import asyncio
import contextlib
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from kernel import Dataflow, Operator, run, run_async

DEADLINE = 10.0  # seconds: far beyond what each step takes (a fraction of a second)
ROOT = Path(__file__).resolve().parents[2]


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
        # (a test whose run is refused closes the read end before it reads:
        # under load before this thread wrote, its flush a BrokenPipeError
        # pytest warned of; what the test reads it asserts on itself)
        with contextlib.suppress(BrokenPipeError), os.fdopen(write_end, "w", encoding=encoding) as out:
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


def numbered_lines(total: int) -> str:
    """`total` lines, "0" to `total - 1`."""
    return "".join(f"{i}\n" for i in range(total))


def run_script_over_a_file(tmp_path: Path, script: str, lines: str, *args: str, stdin=None,
                           timeout: float = 60) -> subprocess.CompletedProcess:
    """`script` (tmp_path/app.py) run by a process of its own with `args`,
    its standard input given from the file tmp_path/lines.txt of `lines`
    (or from `stdin`), in the project's root, on its PYTHONPATH; it exited 0."""
    given_lines = tmp_path / "lines.txt"
    given_lines.write_text(lines)
    app = tmp_path / "app.py"
    app.write_text(script)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with open(given_lines) as given:
        done = subprocess.run([sys.executable, str(app), *args], stdin=given if stdin is None else stdin,
                              capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done


def failing_once_at(marker: str, at: int) -> Callable:
    """For a script's runs: a map function that raises at the value `at`
    while no file `marker` stands (made then: the runs after it pass every
    value), pausing 1 ms each ten values before (epochs complete before it
    fails)."""
    def fails_once(value):
        if not os.path.exists(marker):
            if value == at:
                open(marker, "w").close()
                raise ValueError("the first run fails here")
            if value % 10 == 0:
                time.sleep(0.001)  # (the first run: epochs complete before it fails)
        return value

    return fails_once
