"""A job process's lease from its executor, kept by the job process itself.

An executor fences (kills) its job processes once the coordinator has not
answered it for FENCE_SHARE of the executor timeout, before the coordinator
counts it lost and starts them elsewhere. An executor frozen (SIGSTOP, a
debugger, a process stuck in the kernel) could not: its processes ran on
beside their next attempt. So each job process also holds the deadline
itself: the executor writes it (when it must be dead, by CLOCK_MONOTONIC,
one clock for every process of the machine) down a pipe every RENEW
seconds, and a thread of the job process (`kernel run`) kills its process
group once the last deadline it read has passed. A frozen executor writes
nothing more, so its processes end before the coordinator counts it lost
(the deadline lies between the executor's own fence and that). (A whole
machine frozen freezes its job processes too: they wake with it, and
their thread, like the executor, ends them then.)

A deadline read late is not taken at its word at once. The executor drops
a renewal that a full pipe cannot take (it must never block), so a job
process whose thread did not read for a while (the process stopped, its
thread starved of the GIL by a long call) may find, once it reads again,
only old deadlines, long passed, its executor's newer ones lost: killing
itself then ended a healthy job. A drain of several renewals at once
(read late) whose last deadline has passed waits up to GRACE for the next
renewal (the executor writes every RENEW seconds); a deadline read as it
came (a frozen executor's last) is held exactly.
"""

from __future__ import annotations

import math
import os
import select
import signal
import sys
import threading
import time

# Besides the lease, what an executor sets up in a job's process: SIGINT
# and SIGTERM blocked until `kernel run` can stop as they ask
# (`kernel.system._executor._job_process_setup`, `_run._let_stop_signals_in`):
# a `kill` while the process was still starting, under load, ended it with
# a KeyboardInterrupt traceback, not "interrupted".
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})

VARIABLE = "KERNEL_LEASE_FD"  # the pipe's read end, in the job process
RENEW = 0.1  # seconds between the executor's writes
# how long a deadline read late, and passed, waits for a newer renewal (module docstring)
GRACE = 5 * RENEW


class LeaseWriter:
    """The executor's end of one job process's lease."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        os.set_inheritable(self.read_fd, True)

    def started(self) -> None:
        """The process has its end: the executor's copy goes."""
        os.close(self.read_fd)

    def renew(self, deadline: float) -> None:
        try:
            os.write(self._write_fd, f"{deadline!r}\n".encode())
        except (BlockingIOError, BrokenPipeError):
            pass  # (a process not reading, or ended: nothing to tell it)

    def close(self) -> None:
        os.close(self._write_fd)


def watch_from_environment() -> None:
    """In `kernel run`: hold the lease the executor passes, if it does."""
    fd = os.environ.pop(VARIABLE, None)
    if fd is not None:
        threading.Thread(target=_watch, args=(int(fd),), name="executor lease", daemon=True).start()


def _watch(fd: int) -> None:
    os.set_blocking(fd, False)
    poller = select.poll()  # (not select(): an fd past 1023 is out of its range)
    poller.register(fd, select.POLLIN)
    deadline = end = math.inf  # the last deadline read; when to kill unless a newer one comes
    pending = b""
    while True:
        if not poller.poll(math.ceil(max(0.0, min(end - time.monotonic(), 3600.0) * 1000))):
            if time.monotonic() >= end:
                break
            continue
        data, closed = _drain(fd)
        *lines, pending = (pending + data).split(b"\n")
        if lines:
            deadline = float(lines[-1])
            now = time.monotonic()
            # several renewals at once: read late, newer ones may have been
            # dropped while the pipe was full (module docstring)
            end = now + GRACE if len(lines) > 1 and deadline <= now else deadline
        if closed:
            return  # the executor closed it (it went, and we with it: PR_SET_PDEATHSIG)
    print(f"fenced: the executor has not renewed this process's lease (frozen?): killing process group "
          f"{os.getpgrp()}", file=sys.stderr, flush=True)
    os.killpg(os.getpgrp(), signal.SIGKILL)


def _drain(fd: int) -> tuple[bytes, bool]:
    """What the pipe holds now, and whether its write end is closed."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return b"".join(chunks), False
        if not data:
            return b"".join(chunks), True
        chunks.append(data)
