"""Output printed right after a blocking run, into a pipe read slowly.

uvloop's libuv batches epoll_ctl calls through an io_uring ring that every
loop opens. Closing that ring (the loop's close, at the end of `run(flow)`)
makes the kernel queue, some 10-20 ms later, task work on the thread that
used the ring, with TIF_NOTIFY_SIGNAL: a blocking write to a full pipe in
progress then returns short. Unbuffered stdout (`python -u`,
PYTHONUNBUFFERED=1) is a TextIOWrapper straight over a FileIO, which drops
what a short write left unwritten (CPython gh-85393): `print()` after a run
lost all but the pipe's 65,536 bytes. `_ring_exit.py` takes the notification
before `run` returns in that case.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SIZE = 300_000
# seconds the reader holds off once the pipe is full: the ring's notice comes
# 10-20 ms after the run's end (0.12 s at most seen under load), and a write
# it cuts short ends the child at once (what the wait is for)
HELD = 0.25

CHILD = """
import sys
from kernel import Dataflow, run
flow = Dataflow("after")
flow.from_iterable(range(3)).map(lambda x: x).collect()
cores = int(sys.argv[1])
run(flow, cores=cores) if cores > 1 else run(flow)
getattr(sys, sys.argv[2]).write("x" * int(sys.argv[3]))
getattr(sys, sys.argv[2]).flush()
"""


def _printed(cores: int, stream: str) -> int:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    which = {"stdout": "stdout", "stderr": "stderr"}[stream]
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cores), which, str(SIZE)],
        stdout=subprocess.PIPE if which == "stdout" else subprocess.DEVNULL,
        stderr=subprocess.PIPE if which == "stderr" else subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    pipe = child.stdout if which == "stdout" else child.stderr
    _until_full(pipe.fileno(), child)
    try:  # (a slow reader: the child's write waits in the full pipe as the notice comes)
        child.wait(timeout=HELD)
    except subprocess.TimeoutExpired:
        pass
    got = len(pipe.read())
    assert child.wait(timeout=60) == 0
    return got


def _until_full(fd: int, child: subprocess.Popen) -> None:
    """Until the pipe `fd` holds all it can (the child's write waits in it,
    its run over), or the child has ended."""
    size = fcntl.fcntl(fd, 1032)  # (F_GETPIPE_SZ)
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        held = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]
        if held >= size:
            return
        time.sleep(0.005)


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_every_byte_printed_after_a_one_kernel_run_reaches_a_slow_pipe(stream):
    assert _printed(1, stream) == SIZE


def test_every_byte_printed_after_a_two_kernel_run_reaches_a_slow_pipe():
    assert _printed(2, "stdout") == SIZE
