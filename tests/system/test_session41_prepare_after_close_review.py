"""Session 41 review (second round): an executor on `--host localhost`
resolves localhost off its event loop for a job process's link port
(`_prepare_port`, 6e71a24), so a `prepare` may now be in flight while
close() runs. close() closes the ports prepared (`_forget_prepared`), and
the one whose resolving ended after it was then made and kept listening,
for PREPARED_FOR (120 s) or, the loop stopped, as long as the app held the
executor (seen: `_prepared` holding one port after close(), a connection to
it accepted). A prepare that ends after close() has begun is refused now,
its sockets closed.

In this process: one executor, never connected; localhost resolved only
once the test lets it (a resolver patched to wait)."""

from __future__ import annotations

import asyncio
import socket
import threading

from kernel.system._executor import ExecutorDaemon
from kernel.system._wire import RequestError

PROMPTLY = 10.0  # seconds: an upper bound, never a synchronisation


async def test_a_prepare_in_flight_as_the_executor_closes_leaves_no_port_listening(tmp_path, monkeypatch):
    resolve = socket.getaddrinfo
    asked, answer = threading.Event(), threading.Event()

    def held_getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host.lower() == "localhost":
            asked.set()
            answer.wait(PROMPTLY)
        return resolve(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", held_getaddrinfo)
    executor = ExecutorDaemon(("127.0.0.1", 9), b"prepare-secret", 1, tmp_path / "executor",
                              host="localhost")
    executor._remember({"id": "e1"})  # (as a register would)
    prepare = asyncio.ensure_future(executor._request("prepare", {}))
    try:
        assert await asyncio.to_thread(asked.wait, PROMPTLY)
        await asyncio.wait_for(executor.close(), PROMPTLY)
        answer.set()
        try:
            port = (await asyncio.wait_for(prepare, PROMPTLY))["port"]
            raise AssertionError(f"a prepare after close() was answered: port {port}, "
                                 f"{len(executor._prepared)} port(s) prepared")
        except RequestError as exc:
            assert str(exc) == "executor e1 is stopping"
        assert executor._prepared == {}
    finally:
        answer.set()
        await asyncio.gather(prepare, return_exceptions=True)
        for port in list(executor._prepared):
            executor._forget_prepared(port)
        await executor.close()
