"""A real `redis-server` for tests and benchmarks: started on a free port in
a temporary directory, with nothing persisted, and stopped at the end.

A missing `redis-server` is a failure with a clear message, never a skip:
CI (`.ci/run`) installs it, so a test run that lacks it is misconfigured.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time

MISSING = ("redis-server is not installed: the Redis connector is tested against a real server "
           "(as root: apt-get update && apt-get install -y redis-server; .ci/run does this)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serving_pid(port: int) -> int | None:
    """The process id of the redis-server answering on `port`, or None
    (nothing answers yet). Two servers started at once may be handed one
    free port: the one that loses the bind exits, and a PING alone would
    take the other's answer for its own (two workers' tests, one server)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"INFO server\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    return None
                reply += chunk
    except OSError:
        return None
    for line in reply.split(b"\r\n"):
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


@contextlib.contextmanager
def redis_server(startup_timeout: float = 10.0):
    """Yields the URL of a fresh redis-server (`redis://127.0.0.1:PORT/0`)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(MISSING)
    with tempfile.TemporaryDirectory(prefix="redis-") as directory:
        for _attempt in range(5):  # another server took the port first: another port
            port = free_port()
            process = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
                 "--save", "", "--appendonly", "no"],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            )
            try:
                if _answers(process, port, startup_timeout):
                    yield f"redis://127.0.0.1:{port}/0"
                    return
            finally:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                if process.stdout:
                    process.stdout.close()
        raise RuntimeError("redis-server: every port tried was taken by another server")


def _answers(process: subprocess.Popen, port: int, startup_timeout: float) -> bool:
    """Whether `process` came to answer on `port` (polls its own answer, not
    a sleep); False when another redis-server answers there and `process`
    exited, having lost the bind."""
    deadline = time.monotonic() + startup_timeout
    while True:
        pid = _serving_pid(port)
        if pid == process.pid:
            return True
        if process.poll() is not None:
            if pid is not None:
                return False
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(f"redis-server exited with {process.returncode}:\n{output}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not answer on port {port} within {startup_timeout} s")
        time.sleep(0.01)
