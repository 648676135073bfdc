"""Session 40: a port an executor prepared for a job process's links
(`prepare`, its socket listening until the process's start takes it) whose
start never comes (a coordinator gone between the two) is freed after
PREPARED_FOR seconds by a timer. It was freed only at the next prepare or
start after that: an executor asked nothing more held it for good.

In this process: one executor, no coordinator (the test asks it as one
would), PREPARED_FOR made short."""

from __future__ import annotations

import asyncio
import errno
import socket

from kernel.system import _executor
from kernel.system._executor import ExecutorDaemon

BOUND = 0.5  # PREPARED_FOR here, seconds
MARGIN = 1.0  # seconds past it by which the port must be free


def _taken(port: int) -> bool:
    probe = socket.socket()
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind(("127.0.0.1", port))
        probe.listen()
    except OSError as exc:
        assert exc.errno == errno.EADDRINUSE, exc
        return True
    finally:
        probe.close()
    return False


async def test_a_prepared_port_never_started_is_freed_after_its_bound_without_another_request(
        tmp_path, monkeypatch):
    monkeypatch.setattr(_executor, "PREPARED_FOR", BOUND)
    executor = ExecutorDaemon(("127.0.0.1", 9), b"prepared-secret", 1, tmp_path / "executor",
                              host="127.0.0.1")
    loop = asyncio.get_running_loop()
    try:
        prepared = loop.time()
        port = (await executor._request("prepare", {}))["port"]
        assert _taken(port)  # (held for the start to come)
        while _taken(port):  # (no request meanwhile: only a timer can free it)
            assert loop.time() - prepared < BOUND + MARGIN, f"port {port} still held past {BOUND + MARGIN} s"
            await asyncio.sleep(0.02)
        freed = loop.time() - prepared
        assert freed >= BOUND, f"freed after {freed:.2f} s, before its {BOUND} s"
        assert executor._prepared == {}
        # a start that comes later finds no socket for it (the process binds the port itself)
        assert executor._prepared_sockets(f"127.0.0.1:{port}", 0) == []
    finally:
        await executor.close()
