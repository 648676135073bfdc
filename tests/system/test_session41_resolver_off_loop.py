"""Session 41: an executor on `--host localhost` resolves localhost, for a
job process's link port, off its event loop (`loop.getaddrinfo`, a thread).
It resolved it on the loop: a slow resolver (a DNS server that answers late,
an /etc/nsswitch.conf that asks the network first) held every request and
heartbeat of the executor until it answered.

The resolver here answers only once the executor's loop has run a callback
handed to it while resolving: resolved on the loop, that callback could not
run, and the resolver gave up waiting for it."""

from __future__ import annotations

import asyncio
import socket
import threading

from kernel.system._executor import ExecutorDaemon

PROMPTLY = 10.0  # seconds: an upper bound, never a synchronisation


async def test_a_slow_resolver_does_not_hold_the_executors_loop(tmp_path, monkeypatch):
    loop = asyncio.get_running_loop()
    resolve = socket.getaddrinfo
    asked: list[tuple[str, bool]] = []

    def slow_getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host.lower() == "localhost":
            ran = threading.Event()
            loop.call_soon_threadsafe(ran.set)  # (runs only where the loop is free)
            asked.append((host, ran.wait(PROMPTLY / 2)))
        return resolve(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow_getaddrinfo)
    executor = ExecutorDaemon(("127.0.0.1", 9), b"resolver-secret", 1, tmp_path / "executor",
                              host="localhost")
    try:
        port = (await asyncio.wait_for(executor._request("prepare", {}), PROMPTLY))["port"]
        assert asked == [("localhost", True)]
        with socket.create_connection(("127.0.0.1", port), timeout=PROMPTLY):
            pass  # (listening: the connection waits in its backlog for the process)
    finally:
        await executor.close()
