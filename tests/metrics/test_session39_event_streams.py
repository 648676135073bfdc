"""Found by a review of the metrics/dashboard server (a job's `dashboard=`
and the coordinator's --dashboard): a page's event stream (`/api/events`)
answers its request for as long as it lasts, and the connection cap
(MAX_CONNECTIONS) never closes a connection answering a request, so 64
open streams (64 tabs, or a stranger opening them) reset every scrape of
`/metrics`. Now at most MAX_EVENT_STREAMS streams are open: a new one past
that closes the oldest of the address holding the most, so a scrape always
finds room, and a stranger's streams end its own, not a page's."""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import time
import urllib.request

import pytest
from test_session38_idle_strangers import PATHS, SNAPSHOT, _a_page_reading, _open, _serve, _until

from kernel.metrics import _app, _server


def _streams(port: int, count: int, source: str, receive_buffer: int | None = None) -> list[socket.socket]:
    """`count` event streams requested from `source`, never read."""
    held = []
    for _ in range(count):
        client = socket.socket()
        if receive_buffer:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        client.settimeout(5)
        client.bind((source, 0))
        client.connect(("127.0.0.1", port))
        client.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        held.append(client)
    return held


def _answered(clients: list[socket.socket]) -> int:
    """How many of `clients` got a first event (the others were closed):
    once this returns, each stream the server took is being answered."""
    answered = 0
    for client in clients:
        received = b""
        try:
            while b"data: " not in received:
                chunk = client.recv(1 << 16)
                if not chunk:
                    break
                received += chunk
        except ConnectionResetError:
            continue
        answered += b"data: " in received
    return answered


def _scrape(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        assert response.read()
        return response.status


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_scrapes_get_through_more_event_streams_than_connections_and_a_pages_stream_goes_on(which,
                                                                                            monkeypatch):
    """A page's stream open, a stranger elsewhere opening MAX_CONNECTIONS + 8
    streams: each scrape is answered (every one was reset), the server
    holds no more than MAX_CONNECTIONS, and the page's stream is not one of
    those ended."""
    from kernel.system import _dashboard

    monkeypatch.setattr(_app, "UPDATE_INTERVAL", 0.05)
    monkeypatch.setattr(_dashboard, "UPDATE_INTERVAL", 0.05)

    async def scenario():
        starting, port = _serve(which)
        runner = await starting
        held: list[socket.socket] = []
        try:
            page_reader, page = await _a_page_reading(port)
            held = await asyncio.to_thread(_streams, port, _server.MAX_CONNECTIONS + 8, "127.0.0.2")
            assert await asyncio.to_thread(_answered, held) >= _server.MAX_CONNECTIONS - 1
            for _ in range(3):
                assert await asyncio.to_thread(_scrape, port, PATHS[which]) == 200
                assert _open(runner) <= _server.MAX_CONNECTIONS
            # the page still gets its states: a stream ended would read to its end and stop
            for _ in range(2):
                await asyncio.wait_for(page_reader.readuntil(b"data: "), 5)
            page.close()
        finally:
            for client in held:
                client.close()
            await runner.cleanup()

    asyncio.run(scenario())


def test_a_stream_whose_client_stopped_reading_is_closed_when_replaced(monkeypatch, caplog):
    """Streams whose clients stopped reading, their writes held by full
    socket buffers (small ones, and a state of 1,000 steps, ~100 kB, every
    1 ms), and as many again
    opened (MAX_EVENT_STREAMS 4 here, for speed): the held ones are closed
    (ending them by a flag alone left a held write, and its connection,
    answering for good), nothing is logged, and a scrape is answered."""
    monkeypatch.setattr(_app, "UPDATE_INTERVAL", 0.001)
    monkeypatch.setattr(_server, "MAX_EVENT_STREAMS", 4)
    big = {**SNAPSHOT, "steps": [[f"step {i}", 1, 1, None, None, i, False, 0.0] for i in range(1000)]}

    async def scenario():
        starting, port = _serve("metrics", big, send_buffer=4096)
        runner = await starting
        held: list[socket.socket] = []
        try:
            held = await asyncio.to_thread(_streams, port, _server.MAX_EVENT_STREAMS, "127.0.0.2", 4096)
            await _until(lambda: sum(c.transport is not None and c.transport.get_write_buffer_size() > 0
                                     for c in runner.server.connections) == _server.MAX_EVENT_STREAMS,
                         "the streams' writes were never held")
            stuck = list(held)
            held += await asyncio.to_thread(_streams, port, _server.MAX_EVENT_STREAMS, "127.0.0.2")

            def closed(client: socket.socket) -> bool:  # reset, or read to its end
                try:
                    while select.select([client], [], [], 0)[0]:
                        if not client.recv(1 << 20):
                            return True
                except ConnectionResetError:
                    return True
                return False

            deadline = time.monotonic() + 5
            while not all(map(closed, stuck)):
                assert time.monotonic() < deadline, "a held stream's connection was not closed"
                # and newcomers until then: a held write marks its client as one that stopped
                # reading two intervals of the loop's own time after its last event (the loop
                # held, by these writes among others, counts none), which the first newcomers,
                # opened as soon as the writes were seen held, could come before: each then
                # ended the newest, and a held stream stayed open (1 run in 5, alone)
                held += await asyncio.to_thread(_streams, port, 1, "127.0.0.2")
                await asyncio.sleep(0.01)
            assert await asyncio.to_thread(_scrape, port, "/metrics") == 200
            assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a stream closed was logged"
        finally:
            for client in held:
                client.close()
            await runner.cleanup()

    asyncio.run(scenario())
