"""Session 41, review: `logs` whose stdout its parent made non-blocking
(O_NONBLOCK on the pipe: a parent's own end shared, as Node's and some
build tools' are), read more slowly than it writes, prints the whole log.

`_printed`'s thread wrote with os.write: the pipe full, it raised
BlockingIOError, and the command ended with its traceback, exit 1, after
the pipe's 64 KiB of a 300 kB log. It now waits for room, as a blocking
stdout's write does.

Real processes: a coordinator and an executor, a job whose log is LINES
lines of 100 bytes; the test is the reader: it reads a pipe's worth, waits
for the pipe to be full again (the command's thread at its EAGAIN), then
reads the rest."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import termios

import pytest
from _system import System, wait_until

LINES = 3000  # of 100 bytes: 300 kB, more than a pipe (64 KiB) holds twice
F_GETPIPE_SZ = 1032  # (fcntl: the bytes a pipe holds)


@pytest.fixture(scope="module")
def job_logged(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonblocking_stdout")
    system = System(root)
    try:
        system.start_coordinator()
        system.start_executor(1)
        system.executors_up(1)
        pipeline = root / "p.py"
        pipeline.write_text(f"for i in range({LINES}):\n    print('line %05d ' % i + 'x' * 88)\n"
                            "from kernel import Dataflow\nflow = Dataflow('p')\n"
                            "flow.from_iterable([1]).print()\n")
        done = system.cli("submit", pipeline, "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        yield system, done.stdout.split()[0]
    finally:
        system.close()


@pytest.mark.parametrize("unbuffered", [False, True])
def test_logs_to_a_non_blocking_pipe_read_slowly_prints_it_all(job_logged, unbuffered):
    system, job = job_logged
    whole = system.cli("logs", job)
    assert whole.returncode == 0 and len(whole.stdout) > LINES * 100, whole.stderr
    env = {k: v for k, v in system.env.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETFL, fcntl.fcntl(write, fcntl.F_GETFL) | os.O_NONBLOCK)
    logs = subprocess.Popen([sys.executable, "-m", "kernel", "logs", job], stdout=write,
                            stderr=subprocess.PIPE, env=env, cwd=system.root)
    os.close(write)
    try:
        size = fcntl.fcntl(read, F_GETPIPE_SZ)
        got = [os.read(read, size)]

        def unread() -> int:
            return int.from_bytes(fcntl.ioctl(read, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)

        # (full again: the command's write found no room, EAGAIN)
        wait_until(lambda: unread() >= size or logs.poll() is not None, what="the pipe to be full again")
        while chunk := os.read(read, size):
            got.append(chunk)
        code = logs.wait(30)
        err = logs.stderr.read().decode()
        assert (code, err[-300:]) == (0, "")
        assert b"".join(got).decode() == whole.stdout
    finally:
        logs.kill()
        logs.wait()
        os.close(read)
        logs.stderr.close()
