"""Session 41: a page on a link slower than its states (a state taking
more than two intervals to arrive) was taken for one whose client stopped
reading: its write was held at each of its events, so its patience ran
out while the state was still on its way, and a stranger's newcomer past
MAX_EVENT_STREAMS ended it, the oldest held, before the stranger's own
streams, never read. A stream whose client took some of what it was sent
since the last tick of the server's timer is now reading
(`EventStreams._tick`)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from test_session39_event_streams import _streams
from test_session40_held_page_review import _serve_big

from kernel.metrics import _app, _server

INTERVAL = 0.05
TAKEN = 4096  # bytes the page takes every 10 ms: ~400 kB/s, a ~100 kB state in ~5 intervals


async def _a_slow_page(port: int):
    """A page's event stream over a slow link (a small receive buffer, and
    TAKEN bytes read every 10 ms): (its reading task, a list of the bytes read)."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, TAKEN)
    client.connect(("127.0.0.1", port))
    client.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=client, limit=TAKEN)
    writer.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
    read = [0]

    async def reading() -> None:
        try:
            while chunk := await reader.read(TAKEN):
                read[0] += len(chunk)
                await asyncio.sleep(0.01)
        finally:
            writer.close()

    return asyncio.create_task(reading()), read


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_a_page_on_a_link_slower_than_its_states_is_not_taken_for_one_that_stopped_reading(which,
                                                                                         monkeypatch):
    """The slow page's stream first, then a stranger's streams, never read,
    one an interval from 12 addresses, three times MAX_EVENT_STREAMS (4
    here): the page's stream is never ended, and it goes on reading."""
    from kernel.system import _dashboard

    monkeypatch.setattr(_app, "UPDATE_INTERVAL", INTERVAL)
    monkeypatch.setattr(_dashboard, "UPDATE_INTERVAL", INTERVAL)
    monkeypatch.setattr(_server, "MAX_EVENT_STREAMS", 4)

    async def scenario():
        starting, port = _serve_big(which)
        runner = await starting
        held: list[socket.socket] = []
        page, read = await _a_slow_page(port)
        try:
            while read[0] < 150_000:  # (more than a state: the page is reading, slowly)
                assert not page.done(), "the page's stream ended before any stranger came"
                await asyncio.sleep(0.01)
            before = read[0]
            for i in range(3 * _server.MAX_EVENT_STREAMS):
                held += await asyncio.to_thread(_streams, port, 1, f"127.0.0.{2 + i}")
                await asyncio.sleep(INTERVAL)
                assert not page.done(), f"the page's stream ended at the stranger's stream {i}"
            assert read[0] > before + 100_000, (before, read[0])  # (it read on meanwhile)
        finally:
            page.cancel()
            for client in held:
                client.close()
            await runner.cleanup()

    asyncio.run(scenario())
