"""Session 36's review of a cluster process dialling a peer's address where
something else answers, before it has authenticated: the run ends at once
with one line saying what answered (real processes, a real socket playing
the other program)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import subprocess
import sys

import pytest
from _ports import free_ports
from _procs import without_stall_reports

SECRET = "cluster-dial-review-secret"
PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")


def _upgraded(connection: socket.socket) -> None:
    """Read a websocket upgrade from `connection` and accept it (RFC 6455)."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = connection.recv(4096)
        assert chunk, "the dialler closed before its upgrade"
        request += chunk
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def _start(tmp_path, peers: str, startup_timeout: str = "30") -> subprocess.Popen:
    (tmp_path / "pipeline.py").write_text("from kernel import Dataflow\nflow = Dataflow('x')\n"
                                          "flow.from_iterable(range(10)).print()\n")
    env = {**os.environ, "KERNEL_SECRET": SECRET}
    with open(tmp_path / "p1.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"),
                                 "--process-id", "1", "--peers", peers, "--startup-timeout", startup_timeout],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)


@pytest.mark.parametrize("hello", [b"\x81\x0fnot json at all", b"\x82\x04\x00\x00\x00\x00"],
                         ids=["garbage text", "binary"])
def test_a_websocket_server_with_a_garbage_hello_at_a_peers_address_is_said_so_at_once(tmp_path, hello):
    """A websocket server at process 0's address whose first message is no
    kernel's hello. A text one ended the run with `could not reach process 0
    at ... within 30 s: JSON is malformed: invalid character (byte 4) (it
    closed the connection before answering: TLS on there and off here, or
    too many connections pending there?)`, none of it so; a binary one with
    `error: http://...: did not start the handshake`, naming no process."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        (free,) = free_ports(1)
        process = _start(tmp_path, f"127.0.0.1:{port},127.0.0.1:{free}")
        try:
            other.settimeout(PROMPTLY)
            connection, _ = other.accept()
            with connection:
                _upgraded(connection)
                connection.sendall(hello)
                assert process.wait(PROMPTLY) == 1
        finally:
            process.kill()
            process.wait()
    error = without_stall_reports((tmp_path / "p1.err").read_text())
    assert error.startswith(f"error: process 0 at http://127.0.0.1:{port} answered, but not as a kernel "
                            "server (it "), error
    assert error.endswith("): another program listens there, or --peers gives the wrong port\n"), error
    assert error.count("\n") == 1, error


def test_a_server_that_stalls_in_the_handshake_at_a_peers_address_is_named_as_that_process(tmp_path):
    """A server at process 0's address that sends a kernel's hello and never
    answers the dialler's: the run ended with `error: http://127.0.0.1:PORT
    did not finish the handshake in time`, naming no process."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        (free,) = free_ports(1)
        process = _start(tmp_path, f"127.0.0.1:{port},127.0.0.1:{free}", startup_timeout="2")
        try:
            other.settimeout(PROMPTLY)
            connection, _ = other.accept()
            with connection:
                _upgraded(connection)
                connection.sendall(b'\x81\x1d{"process": 0, "nonce": "00"}')
                assert process.wait(PROMPTLY) == 1
        finally:
            process.kill()
            process.wait()
    assert without_stall_reports((tmp_path / "p1.err").read_text()) == (
        f"error: process 0 at http://127.0.0.1:{port} did not finish the handshake in time\n")
