"""Session 41 review: a page on a link slower than its states, its server's
connection with a send buffer as the kernel grows it (not the 4 KiB of
test_session41_slow_page), was still taken for one that stopped reading. The
connection's buffer in the process (`get_write_buffer_size`) drains in steps,
not a little every interval: the socket takes more only once its kernel
buffer has half emptied, so it stayed the same for many ticks while the page
read on, its patience ran out, and a stranger's newcomer past
MAX_EVENT_STREAMS ended it. Seen so with a real Chromium over a link shaped
to 100 kB/s (tc on a veth), the real 0.5 s interval: its stream ended at the
stranger's sixth stream, its write holding the same 100,100 bytes three
ticks in a row. A client takes what its connection's peer acknowledged
(TCP_INFO's bytes_acked: `_app._taken`, `EventStreams._taking`)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from _metrics_helpers import a_slow_page_served, slow_page_settings, strangers_streams
from test_session40_held_page_review import SNAPSHOT, STEPS

from kernel.metrics import _app, _server

INTERVAL = 0.05
SEND_BUFFER = 256 << 10  # (the kernel doubles it: ~170 kB at a step, one every ~0.4 s at the page's pace)


def _serve_big(which: str):
    """A server of kind `which` sending a ~100 kB state over connections
    with a send buffer of SEND_BUFFER: (awaitable runner, port)."""
    if which == "metrics":
        sock = _server.listen(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        big = {**SNAPSHOT, "steps": [[f"step {i}", 1, 1, None, None, i, False, 0.0] for i in range(STEPS)]}
        return _server.serve_on_loop(sock, lambda: [big]), sock.getsockname()[1]
    from kernel.system._dashboard import dashboard_socket, serve_dashboard

    sock = dashboard_socket("127.0.0.1", 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    big = {"executors": [{"id": f"executor {i}", "address": "10.0.0.1:7000" * 4} for i in range(STEPS)],
           "jobs": [], "topics": []}
    return serve_dashboard(sock, lambda: big), sock.getsockname()[1]


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_a_slow_page_whose_connection_drains_in_steps_is_not_taken_for_one_that_stopped_reading(
        which, monkeypatch):
    """The slow page's stream first (~400 kB/s), then a stranger's streams,
    never read, one an interval from 12 addresses, three times
    MAX_EVENT_STREAMS (4 here): the page's stream is never ended."""
    slow_page_settings(monkeypatch, INTERVAL)
    # the streams' ends, in the order opened: the page's first (its connection closed, the page
    # reads on what the kernel still held for it, ~0.5 MB, before it sees its end)
    ends: list[asyncio.Event] = []
    opening = _app.EventStreams.open
    monkeypatch.setattr(_app.EventStreams, "open",
                        lambda self, *args: ends.append(opening(self, *args)) or ends[-1])

    async def scenario():
        async with a_slow_page_served(_serve_big(which)) as (port, page, read, held):
            while read[0] < 2 * SEND_BUFFER + 150_000:  # (its send buffer full: its write held)
                assert not page.done() and not (ends and ends[0].is_set()), "the page's stream ended early"
                await asyncio.sleep(0.01)
            before = read[0]
            async for i in strangers_streams(port, INTERVAL, held):
                assert not ends[0].is_set(), f"the page's stream ended at the stranger's stream {i}"
            assert read[0] > before + 100_000, (before, read[0])  # (it read on meanwhile)

    asyncio.run(scenario())
