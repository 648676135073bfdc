"""Found by a third review of the dashboard's event streams
(`_app.EventStreams._patience`): the time no stream called past an
interval was taken for the server's loop held, and moved every stream's
patience on by it; but no stream calls either where every one is held in
its write (a stranger's streams, never read). A stranger whose 31 streams,
from 31 addresses, stopped reading and were left so a while (1 s here, 5
intervals) were never taken for ones that stopped reading (each one's
patience moved on as fast as time went): the page that came next was the
newest of the addresses holding the most, and the stranger's next
newcomer ended it, not a stalled stream of its own (3 runs of 3 on each
server). Now the loop counts as held only for the time a timer of its
own was late (`EventStreams._tick`), which no client can make."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from test_session38_idle_strangers import _until
from test_session39_event_streams import _answered, _streams
from test_session40_held_page_review import _serve_big

from kernel.metrics import _app, _server

INTERVAL = 0.2
QUIET = 1.0  # the stranger's streams all held in their writes: 5 intervals


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_strangers_streams_held_in_their_writes_a_while_do_not_end_the_next_page(which, monkeypatch):
    """31 strangers' streams from 31 addresses, never read, every one held
    in its write for 20 intervals; then a page, read; then a newcomer: it
    ends a stalled stranger's stream, not the page's."""
    from kernel.system import _dashboard

    monkeypatch.setattr(_app, "UPDATE_INTERVAL", INTERVAL)
    monkeypatch.setattr(_dashboard, "UPDATE_INTERVAL", INTERVAL)

    async def scenario():
        starting, port = _serve_big(which)
        runner = await starting
        held: list[socket.socket] = []
        newcomer: list[socket.socket] = []
        page_reading = page = None
        try:
            for i in range(_server.MAX_EVENT_STREAMS - 1):
                held += await asyncio.to_thread(_streams, port, 1, f"127.0.0.{2 + i}", 4096)
            assert await asyncio.to_thread(_answered, held) == len(held)
            await _until(lambda: len(runner.server.connections) == len(held)
                         and all(c.transport.get_write_buffer_size() for c in runner.server.connections),
                         "the strangers' writes were not all held")
            await asyncio.sleep(QUIET)  # (the scenario: no stream is served for a while)
            reader, page = await asyncio.open_connection("127.0.0.1", port)
            page.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
            read = 0

            async def reading() -> None:
                nonlocal read
                while chunk := await reader.read(1 << 16):
                    read += len(chunk)

            page_reading = asyncio.create_task(reading())
            await _until(lambda: read > 0, "the page read nothing")
            newcomer += await asyncio.to_thread(_streams, port, 1, "127.0.0.99")
            assert await asyncio.to_thread(_answered, newcomer) == 1
            before, since = read, time.monotonic()
            await _until(lambda: read > before + 200_000 or page_reading.done(), "the page read nothing more")
            assert not page_reading.done(), (
                f"the page's stream was ended by the newcomer ({time.monotonic() - since:.2f} s after it)")
        finally:
            if page_reading is not None:
                page_reading.cancel()
            if page is not None:
                page.close()
            for stranger in held + newcomer:
                stranger.close()
            await runner.cleanup()

    asyncio.run(scenario())
