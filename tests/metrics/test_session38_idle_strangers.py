"""Found by a review of the metrics/dashboard server (a job's `dashboard=`
and the coordinator's --dashboard): open connections are capped at
MAX_CONNECTIONS, and a connection past the cap was closed as soon as it
was accepted, so a stranger holding 64 connections that sent nothing, or
part of a request (re-opened as the idle timeout closed them), refused
every scrape and every page. Now a newcomer past the cap closes the
connection idle longest, of the address holding the most idle ones; a
connection answering a request (a page's event stream) is never closed to
make room, and the cap still holds."""

from __future__ import annotations

import asyncio
import select
import socket
import time
import urllib.request
from http.client import HTTPConnection

import pytest

from kernel.metrics import _server

SNAPSHOT = {"kernel": 0, "steps": [["numbers", 1, 1, None, None, 1, False, 0.0]], "busy": {},
            "stalls": 0, "idle": 0.0}
PATHS = {"metrics": "/metrics", "system": "/api/system"}  # what a scraper reads of each


def _serve(which: str, snapshot=SNAPSHOT, send_buffer: int | None = None):
    """A server of kind `which` starting on a free port: (awaitable runner,
    port); `send_buffer`: its connections' socket send buffer (Linux gives
    an accepted socket the listening one's)."""
    if which == "metrics":
        sock = _server.listen(("127.0.0.1", 0))
        if send_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
        return _server.serve_on_loop(sock, lambda: [snapshot]), sock.getsockname()[1]
    from kernel.system._dashboard import dashboard_socket, serve_dashboard

    sock = dashboard_socket("127.0.0.1", 0)
    return serve_dashboard(sock, lambda: {"executors": [], "jobs": [], "topics": []}), sock.getsockname()[1]


async def _a_page_reading(port: int):
    """A page's event stream, its first event read: (reader, writer)."""
    page_reader, page = await asyncio.open_connection("127.0.0.1", port)
    page.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
    await asyncio.wait_for(page_reader.readuntil(b"data: "), 5)
    return page_reader, page


def _open(runner) -> int:
    """Connections the server holds open."""
    return sum(c.transport is not None and not c.transport.is_closing() for c in runner.server.connections)


async def _until(condition, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def _stranger(port: int, count: int, source: str = "127.0.0.1") -> list[socket.socket]:
    """`count` connections from `source`: every other one sends part of a
    request and stalls, the others send nothing."""
    held = []
    for i in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        if i % 2:
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        client.setblocking(False)
        held.append(client)
    return held


def _closed(client: socket.socket) -> bool:
    """Whether the server closed `client` (EOF or reset); False while it is open and silent."""
    if not select.select([client], [], [], 0)[0]:
        return False
    try:
        return client.recv(1, socket.MSG_PEEK) == b""
    except ConnectionResetError:
        return True


def _scrape(port: int, path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read()


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_scrapes_get_through_a_stranger_holding_every_connection_and_a_pages_stream_goes_on(which,
                                                                                          monkeypatch):
    """A page's event stream open, a stranger holding every other slot
    (re-opening each connection closed): each scrape is answered (the first
    was reset at once), the page's stream is not cut, and the server never
    holds more than MAX_CONNECTIONS."""
    from kernel.metrics import _app
    from kernel.system import _dashboard

    monkeypatch.setattr(_app, "UPDATE_INTERVAL", 0.05)
    monkeypatch.setattr(_dashboard, "UPDATE_INTERVAL", 0.05)

    async def scenario():
        starting, port = _serve(which)
        runner = await starting
        held: list[socket.socket] = []
        try:
            page_reader, page = await _a_page_reading(port)
            held = await asyncio.to_thread(_stranger, port, _server.MAX_CONNECTIONS - 1)
            await _until(lambda: _open(runner) == _server.MAX_CONNECTIONS,
                         "the server never took the stranger's connections")
            for _ in range(3):
                assert await asyncio.to_thread(_scrape, port, PATHS[which])
                assert _open(runner) <= _server.MAX_CONNECTIONS
                for closed in [c for c in held if _closed(c)]:  # the stranger opens them again
                    closed.close()
                    held.remove(closed)
                held += await asyncio.to_thread(_stranger, port, _server.MAX_CONNECTIONS - 1 - len(held))
            scraped = time.monotonic()
            while time.monotonic() - scraped < 0.3:  # (cut, it would end once what came before is read)
                assert await asyncio.wait_for(page_reader.read(1 << 20), 5), "the page's stream was cut"
            page.close()
        finally:
            for client in held:
                client.close()
            await runner.cleanup()

    asyncio.run(scenario())


@pytest.mark.parametrize("loop, burst", [("asyncio", False), ("asyncio", True), ("uvloop", True)])
def test_a_stranger_elsewhere_gives_up_its_own_connections_not_a_scrapers_kept_alive_one(loop, burst):
    """A scraper's kept-alive connection, older than any of a stranger's on
    another address: the stranger filling the cap closes its own oldest,
    the scraper's next request on its connection is answered, and so is a
    scrape on a new connection. (Review: `burst`, the stranger's 64
    connections all accepted at once, made while the server's loop is held,
    as a burst arrives. The cap was decided as each connection's protocol
    was made, before any of the burst was connected, so the only connection
    that could be closed was the scraper's kept-alive one. Decided once each
    is made, the stranger gives up its own oldest.)"""
    import uvloop

    async def scenario():
        starting, port = _serve("metrics")
        runner = await starting
        scraper = HTTPConnection("127.0.0.1", port, timeout=5)
        held: list[socket.socket] = []
        try:
            def scrape_kept_alive() -> bytes:
                scraper.request("GET", "/metrics")
                return scraper.getresponse().read()

            assert await asyncio.to_thread(scrape_kept_alive)
            if burst:
                # (connected by the kernel in the listening socket's backlog: the loop, held
                # here, accepts them together once this returns)
                held = _stranger(port, _server.MAX_CONNECTIONS, "127.0.0.2")
            else:
                held = await asyncio.to_thread(_stranger, port, _server.MAX_CONNECTIONS, "127.0.0.2")
            await _until(lambda: any(map(_closed, [*held, scraper.sock])),
                         "no connection was closed past the cap")
            assert not _closed(scraper.sock), "the scraper's kept-alive connection was closed"
            assert _closed(held[0]), "not the stranger's oldest connection closed"
            if burst:
                assert _open(runner) == _server.MAX_CONNECTIONS
            assert await asyncio.to_thread(scrape_kept_alive)
            assert await asyncio.to_thread(_scrape, port, "/metrics")
        finally:
            scraper.close()
            for client in held:
                client.close()
            await runner.cleanup()

    if loop == "uvloop":
        uvloop.run(scenario())
    else:
        asyncio.run(scenario())
