"""Session 41 review: an executor on `--host localhost` resolves localhost
for a job process's link port off its event loop (`_resolved_off_the_loop`),
but where that found nothing (the resolver failed: timed out, a DNS server
down) it fell back to `_listening_socket('localhost')`, whose
`sock.bind(('localhost', 0))` resolved the name again, in C, on the loop:
a slow resolver held the executor's every request and heartbeat for as
long again (2.00 s of 2.00 s with a getaddrinfo slowed by 2 s through
LD_PRELOAD). The fallback binds localhost's IPv4 address, as that bind
resolved it to, by number.

What is bound is watched (a socket class that notes each bind's address):
a name there is a resolution on the loop."""

from __future__ import annotations

import asyncio
import socket

from kernel.system._executor import ExecutorDaemon

PROMPTLY = 10.0  # seconds: an upper bound, never a synchronisation


async def test_localhost_unresolved_off_the_loop_is_bound_by_its_address(tmp_path, monkeypatch):
    resolve = socket.getaddrinfo
    bound: list[str] = []

    def failing_getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host.lower() == "localhost":
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return resolve(host, port, *args, **kwargs)

    class NotingSocket(socket.socket):
        def bind(self, address):
            bound.append(address[0])
            return super().bind(address)

    monkeypatch.setattr(socket, "getaddrinfo", failing_getaddrinfo)
    monkeypatch.setattr(socket, "socket", NotingSocket)
    executor = ExecutorDaemon(("127.0.0.1", 9), b"resolver-secret", 1, tmp_path / "executor",
                              host="localhost")
    try:
        port = (await asyncio.wait_for(executor._request("prepare", {}), PROMPTLY))["port"]
        assert bound == ["127.0.0.1"]
        with socket.create_connection(("127.0.0.1", port), timeout=PROMPTLY):
            pass  # (listening: the connection waits in its backlog for the process)
    finally:
        await executor.close()
