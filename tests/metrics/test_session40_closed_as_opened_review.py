"""Found by a second review of the dashboard's event streams
(`_app.server_sent_events`): a ConnectionError from a page that went away
was caught once its stream had begun, but not from the stream's start
(`response.prepare`, which writes its headers): a client that sent its
request and closed at once (a tab closed or reloaded as it opened, or a
stranger) had aiohttp log "Error handling request" at ERROR with its
traceback (ClientConnectionResetError: Cannot write to closing transport),
20 of 20 such clients on each server: whoever reaches the port could fill
the run's output. Now the stream ends quietly there too."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest
from test_session38_idle_strangers import _a_page_reading, _serve, _until


@pytest.mark.parametrize("how", ["closed", "reset"])
@pytest.mark.parametrize("which", ["metrics", "system"])
def test_a_client_closing_as_its_stream_opens_is_not_logged_as_an_error(which, how, caplog):
    """20 clients each asking for the event stream and closing at once
    (FIN, or a reset): nothing is logged at ERROR, and a page's stream
    opened after them is answered."""

    def closing_at_once(port: int) -> None:
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        if how == "reset":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()

    async def scenario():
        starting, port = _serve(which)
        runner = await starting
        try:
            for _ in range(20):
                await asyncio.to_thread(closing_at_once, port)
            await _until(lambda: not runner.server.connections, "a closed client's connection is still held")
            _, page = await _a_page_reading(port)  # (the streams before it were taken and answered)
            page.close()
        finally:
            await runner.cleanup()

    caplog.set_level(logging.DEBUG)
    asyncio.run(scenario())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, f"{len(errors)} clients gone were logged as errors: {errors[0].getMessage()}"
