"""Session 41, review: `logs` writing a reply on its thread (`_printed`)
while its reader holds it (`logs JOB | less`, a page read) ends at once on
Ctrl-C, and quietly when the reader goes.

The reply was written by the default executor's thread through stdout's
buffer: Ctrl-C cancelled the command, but asyncio.run's end waited for
that thread, and the exit's flush for the buffer's lock it held, so the
command ignored Ctrl-C (twice too) until the pager was quit (where it
ended at once, "interrupted", 130, before the thread). And with
PYTHONUNBUFFERED=1 a reader gone in the middle of a reply left it exiting
0, its log cut, where the README says 141. It is now a daemon thread
writing to the descriptor itself.

Real processes: a coordinator and an executor, a job whose log is LINES
lines of 100 bytes, more than a pipe holds; the test is the pager: it reads
a pipe's worth and waits for the pipe to be full again (the command's
thread held in its write), then interrupts it, or closes the pipe."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import termios
import time

import pytest
from _system import System, a_logged_job, wait_until

LINES = 3000  # of 100 bytes: 300 kB, more than a pipe (64 KiB) holds twice
F_GETPIPE_SZ = 1032  # (fcntl: the bytes a pipe holds, 64 KiB by default)


@pytest.fixture(scope="module")
def job_logged(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs_printed")
    system = System(root)
    try:
        system.start_coordinator()
        system.start_executor(1)
        system.executors_up(1)
        yield system, a_logged_job(system, root, LINES)
    finally:
        system.close()


def _held_logs(system: System, job: str):
    """`logs JOB` into a pipe, its first page read, its thread held in its write."""
    read, write = os.pipe()
    # (PYTHONUNBUFFERED=1, as container images often set it: the reader gone
    # mid-write ended the command 0 then, its log cut without a word)
    logs = subprocess.Popen([sys.executable, "-m", "kernel", "logs", job], stdout=write,
                            stderr=subprocess.PIPE, env=dict(system.env, PYTHONUNBUFFERED="1"),
                            cwd=system.root)
    os.close(write)
    size = fcntl.fcntl(read, F_GETPIPE_SZ)
    first = os.read(read, size)
    assert first.startswith(b"--- ") or first.startswith(b"line "), first[:200]

    def unread() -> int:
        return int.from_bytes(fcntl.ioctl(read, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)

    wait_until(lambda: unread() >= size, what="the pipe to be full again")
    return logs, read


def test_ctrl_c_during_a_held_write_ends_the_command_at_once(job_logged):
    system, job = job_logged
    logs, read = _held_logs(system, job)
    try:
        started = time.monotonic()
        logs.send_signal(signal.SIGINT)  # (the pager, less, ignores it, and stays)
        try:
            code = logs.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - started
        err = logs.stderr.read().decode() if code is not None else ""
        assert (code, err) == (130, "interrupted\n"), f"still running {took:.1f} s after Ctrl-C"
        assert took < 5
    finally:
        logs.kill()
        logs.wait()
        os.close(read)
        logs.stderr.close()


def test_the_reader_gone_during_a_held_write_ends_it_quietly(job_logged):
    system, job = job_logged
    logs, read = _held_logs(system, job)
    try:
        os.close(read)  # (the pager quit: `logs JOB | head`)
        read = None
        assert logs.wait(10) == 141
        assert logs.stderr.read().decode() == ""
    finally:
        logs.kill()
        logs.wait()
        if read is not None:
            os.close(read)
        logs.stderr.close()
