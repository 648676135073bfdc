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


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(startup_timeout: float = 10.0):
    """Yields the URL of a fresh redis-server (`redis://127.0.0.1:PORT/0`)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(MISSING)
    with tempfile.TemporaryDirectory(prefix="redis-") as directory:
        port = free_port()
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + startup_timeout
            while not _ping(port):  # polls the server's own answer, not a sleep
                if process.poll() is not None:
                    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                    raise RuntimeError(f"redis-server exited with {process.returncode}:\n{output}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not answer PING on port {port} "
                                       f"within {startup_timeout} s")
                time.sleep(0.01)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout:
                process.stdout.close()
