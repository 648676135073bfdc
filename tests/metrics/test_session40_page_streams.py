"""At most MAX_EVENT_STREAMS event streams are open (`_app.EventStreams`),
and a new one past that ended the oldest of the address holding the most:
a stranger opening one stream from each of 32 addresses (or 32 from the
page's own address: another user behind the same NAT, a script on the same
machine) ended the page's stream, the oldest. Now a newcomer ends a
stream whose client stopped reading, if any, and otherwise the newest of
the address holding the most: a stream already being read (the page's) is
not displaced by streams opened after it, whatever their addresses."""

from __future__ import annotations

import asyncio
import select
import socket

import pytest
from test_session38_idle_strangers import _a_page_reading, _serve, _until
from test_session39_event_streams import _answered, _streams

from kernel.metrics import _app, _server


def _from_many_addresses(port: int, count: int, first: int) -> list[socket.socket]:
    """`count` streams, one from each of 127.0.0.`first`... (loopback takes
    any 127.x.y.z), never read past their first event."""
    held = []
    for i in range(count):
        held += _streams(port, 1, f"127.0.{(first + i) // 250}.{(first + i) % 250 + 2}")
    return held


def _ended(client: socket.socket) -> bool:
    """Whether the server ended `client`'s stream (reset, or read to its end)."""
    try:
        while select.select([client], [], [], 0)[0]:
            if not client.recv(1 << 20):
                return True
    except ConnectionResetError:
        return True
    return False


STRANGERS = {
    "one stream from each of many addresses": _from_many_addresses,
    "streams from the page's own address": lambda port, count, _: _streams(port, count, "127.0.0.1"),
}


@pytest.mark.parametrize("which", ["metrics", "system"])
@pytest.mark.parametrize("stranger", list(STRANGERS))
def test_a_pages_stream_is_not_ended_by_streams_opened_after_it(which, stranger, monkeypatch):
    """A page's stream open and read; a stranger opens twice
    MAX_EVENT_STREAMS streams, each answered its first event: the page's
    stream goes on (it was ended: read to its end, or reset), the
    stranger's newest are the ones ended, and the server holds no more
    than MAX_EVENT_STREAMS streams."""
    from kernel.system import _dashboard

    monkeypatch.setattr(_app, "UPDATE_INTERVAL", 0.05)
    monkeypatch.setattr(_dashboard, "UPDATE_INTERVAL", 0.05)
    limit = _server.MAX_EVENT_STREAMS

    async def scenario():
        starting, port = _serve(which)
        runner = await starting
        held: list[socket.socket] = []
        try:
            page_reader, page = await _a_page_reading(port)
            for round_ in range(2):  # the first fills the streams' room, the second goes past it
                opened = await asyncio.to_thread(STRANGERS[stranger], port, limit, 10 + round_ * limit)
                held += opened
                # each stream is taken (another ended) before its first event: once each was
                # answered or ended, every one is decided
                answered = await asyncio.to_thread(_answered, opened)
                assert answered >= limit - 1, answered  # (one may end before its first event)
            # the page still gets its states: a stream ended would read to its end and stop
            for _ in range(3):
                await asyncio.wait_for(page_reader.readuntil(b"data: "), 5)
            # each newcomer past the limit ended the stranger's newest (the one opened just
            # before it, where the server took them in the order they were opened): the page
            # and the stranger's older streams keep the room, with its last
            ended: set[int] = set()

            def all_ended() -> bool:
                ended.update(at for at, client in enumerate(held) if at not in ended and _ended(client))
                return len(ended) == limit + 1

            await _until(all_ended, "not as many streams ended as opened past the limit")
            assert min(ended) >= limit // 2 and 2 * limit - 1 not in ended, sorted(ended)
            page.close()
        finally:
            for client in held:
                client.close()
            await runner.cleanup()

    asyncio.run(scenario())
