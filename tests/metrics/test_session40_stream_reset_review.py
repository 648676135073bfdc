"""Found by a review of the dashboard's event streams (`_app.server_sent_events`):
a page that went away was caught as a ConnectionResetError, but a client
that stopped reading (a tab asleep: its state's write waiting in
aiohttp's drain) and then closed its connection (reset, what it had not
read thrown away) makes aiohttp raise ConnectionError("Connection lost"),
which was logged at ERROR with its traceback (`kernel.metrics.http`), 9
of 10 such pages. Now any ConnectionError ends the stream quietly."""

from __future__ import annotations

import asyncio
import logging

import pytest
from test_session38_idle_strangers import _open, _until
from test_session40_held_page_review import _serve_big

from kernel.metrics import _app


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_a_page_that_stopped_reading_then_closed_is_not_logged_as_an_error(which, monkeypatch, caplog):
    """Pages reading part of a large state, stopping, then closing their
    connections: nothing is logged at ERROR."""
    from kernel.system import _dashboard

    monkeypatch.setattr(_app, "UPDATE_INTERVAL", 0.05)
    monkeypatch.setattr(_dashboard, "UPDATE_INTERVAL", 0.05)

    async def scenario():
        starting, port = _serve_big(which)
        runner = await starting

        def waiting() -> bool:
            return any(c.transport is not None and c.transport.get_write_buffer_size() > 65536
                       for c in runner.server.connections)

        try:
            for _ in range(5):
                reader, page = await asyncio.open_connection("127.0.0.1", port)
                page.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
                await asyncio.wait_for(reader.readexactly(50_000), 5)
                # the page stops reading: the server's write waits on it (paused past 64 kB)
                await _until(waiting, "the page's write never waited")
                page.close()
                await _until(lambda: _open(runner) == 0, "the page's connection was never closed")
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a page gone was logged as an error"
