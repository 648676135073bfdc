"""Found by a review of the dashboard's event streams (`_app.EventStreams`):
past MAX_EVENT_STREAMS a newcomer ended first the oldest stream whose
write was held, taken for a client that stopped reading. A page's stream
holds its write while a large state is being sent (~100 kB for 1,000
steps, over a link slower than the server: a small send buffer here), so
a stranger's streams opened after the page's ended the page's, the
oldest held, though it read every event (5 runs of 5 at the first
newcomer past the limit, 1 of 4 at the real interval, 0.5 s). Now a
write counts as held only once the stream's client has not taken what it
was sent for two intervals (`EventStreams.caught_up`)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from test_session38_idle_strangers import SNAPSHOT
from test_session39_event_streams import _streams

from kernel.metrics import _app, _server

STEPS = 1000  # a state of ~100 kB


def _serve_big(which: str):
    """A server of kind `which` sending a large state, its connections'
    send buffer small (a slow link): (awaitable runner, port)."""
    if which == "metrics":
        sock = _server.listen(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = {**SNAPSHOT, "steps": [[f"step {i}", 1, 1, None, None, i, False, 0.0] for i in range(STEPS)]}
        return _server.serve_on_loop(sock, lambda: [big]), sock.getsockname()[1]
    from kernel.system._dashboard import dashboard_socket, serve_dashboard

    sock = dashboard_socket("127.0.0.1", 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = {"executors": [{"id": f"executor {i}", "address": "10.0.0.1:7000" * 4} for i in range(STEPS)],
           "jobs": [], "topics": []}
    return serve_dashboard(sock, lambda: big), sock.getsockname()[1]


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_a_pages_stream_sending_a_large_state_is_not_taken_for_one_that_stopped_reading(which, monkeypatch):
    """A page reading its stream of large states as fast as it comes; a
    stranger opens three times MAX_EVENT_STREAMS streams, never read, from
    30 addresses: the page's stream is never ended."""
    from kernel.system import _dashboard

    monkeypatch.setattr(_app, "UPDATE_INTERVAL", 0.05)
    monkeypatch.setattr(_dashboard, "UPDATE_INTERVAL", 0.05)

    async def scenario():
        starting, port = _serve_big(which)
        runner = await starting
        held: list[socket.socket] = []
        reader, page = await asyncio.open_connection("127.0.0.1", port)
        page.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        read = 0

        async def reading() -> None:
            nonlocal read
            while chunk := await reader.read(1 << 20):
                read += len(chunk)

        page_reading = asyncio.create_task(reading())
        try:
            await asyncio.sleep(0.1)  # (the page has read some states: each sent as it is read)
            for i in range(3 * _server.MAX_EVENT_STREAMS):
                held += await asyncio.to_thread(_streams, port, 1, f"127.0.0.{2 + i % 30}")
                await asyncio.sleep(0.01)
                assert not page_reading.done(), f"the page's stream ended at the stranger's stream {i}"
            assert read > 3 * 100_000, read  # (states read: the page kept reading)
        finally:
            page_reading.cancel()
            page.close()
            for client in held:
                client.close()
            await runner.cleanup()

    asyncio.run(scenario())
