"""Found by a second review of the dashboard's event streams
(`_app.EventStreams`): a stream counted as one whose client stopped
reading where its write had been held for two intervals of wall time, the
time the server's own loop was held included (a step of a one-kernel run,
whose loop serves the dashboard; a GC pause). A page taking its large
states at ~400 kB/s (each within the interval), its write under way as the
loop was held 1.5 s, was ended by the next newcomer past the limit: 3 runs
of 3 (0 of 3 with the loop not held), the page shown disconnected till it
reconnected. Now the time no stream was served past an interval moves
every stream's patience on (`EventStreams._patience`)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from test_session38_idle_strangers import _until
from test_session39_event_streams import _answered, _streams
from test_session40_held_page_review import _serve_big

from kernel.metrics import _app, _server

INTERVAL = 0.2
HELD = 0.6  # the loop held: past the patience of two intervals


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_a_page_whose_state_was_being_sent_as_the_loop_was_held_is_not_ended(which, monkeypatch):
    """A page reading its large states over a slow link (each taken within
    the interval); 31 strangers' streams, read, from other addresses; the
    loop held while the page's write is under way, a newcomer coming
    meanwhile: the newcomer ends a stranger's stream, not the page's."""
    from kernel.system import _dashboard

    monkeypatch.setattr(_app, "UPDATE_INTERVAL", INTERVAL)
    monkeypatch.setattr(_dashboard, "UPDATE_INTERVAL", INTERVAL)

    async def scenario():
        loop = asyncio.get_running_loop()
        starting, port = _serve_big(which)
        runner = await starting
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", port))
        client.setblocking(False)
        reader, page = await asyncio.open_connection(sock=client)
        page.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        read = 0

        async def reading() -> None:  # ~1.6 MB/s: a state in a fraction of the interval
            nonlocal read
            while chunk := await reader.read(16384):
                read += len(chunk)
                await asyncio.sleep(0.01)

        page_reading = asyncio.create_task(reading())
        held: list[socket.socket] = []
        stop_draining = threading.Event()
        draining: threading.Thread | None = None
        newcomer: list[socket.socket] = []
        try:
            await _until(lambda: read > 0, "the page read nothing")
            for i in range(_server.MAX_EVENT_STREAMS - 1):
                held += await asyncio.to_thread(_streams, port, 1, f"127.0.0.{2 + i}")

            def drain() -> None:  # the strangers read theirs
                while not stop_draining.is_set():
                    for stranger in held:
                        try:
                            while stranger.recv(1 << 20):
                                pass
                        except (BlockingIOError, ConnectionError):
                            pass
                    time.sleep(0.01)

            for stranger in held:
                stranger.setblocking(False)

            draining = threading.Thread(target=drain)
            draining.start()
            page_port = page.get_extra_info("sockname")[1]
            connection = next(c for c in runner.server.connections
                              if c.transport.get_extra_info("peername")[1] == page_port)

            def hold_while_sending() -> None:
                if not connection.transport.get_write_buffer_size():
                    loop.call_soon(hold_while_sending)
                    return
                # a newcomer comes while the loop is held, the page's write under way
                arriving = threading.Thread(target=lambda: newcomer.extend(_streams(port, 1, "127.0.0.99")))
                arriving.start()
                time.sleep(HELD)
                arriving.join()

            loop.call_soon(hold_while_sending)
            await _until(lambda: newcomer, "no newcomer came")
            assert await asyncio.to_thread(_answered, newcomer) == 1
            before = read
            await _until(lambda: read > before + 200_000 or page_reading.done(), "the page read nothing more")
            assert not page_reading.done(), "the page's stream was ended by the newcomer"
        finally:
            stop_draining.set()
            if draining is not None:
                draining.join()
            page_reading.cancel()
            page.close()
            for stranger in held + newcomer:
                stranger.close()
            await runner.cleanup()

    asyncio.run(scenario())
