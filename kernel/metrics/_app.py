"""The aiohttp application of `dashboard=`: Prometheus's `/metrics`, and
the dashboard.

    /             the page (`_static/index.html`, its script and style:
                  plain files shipped with the package, no build step,
                  nothing fetched from elsewhere)
    /api/graph    the flow's graph (`Graph.describe()`); 503 until known
    /api/state    the kernels' metrics summed per step (`_dashboard.py`)
    /api/events   the same state as server-sent events, every
                  UPDATE_INTERVAL; a last `end` event when the run stops
                  (with `failed` or `stopped`, the error's first line,
                  when the run did not finish: `run_outcome`)

Server-sent events rather than a websocket: the page only listens, and
the browser's EventSource reconnects by itself.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

from ._dashboard import dashboard_state
from ._exposition import CONTENT_TYPE, render

NO_CACHE = {"Cache-Control": "no-cache"}  # a new version of the package serves a new page
UPDATE_INTERVAL = 0.5  # seconds between two states a dashboard is sent
# Seconds a stream's client may take nothing of what it was sent, past its patience (two
# intervals), before its stream is ended: a tab the browser froze (Chromium freezes background
# tabs), a machine asleep. Kept, such a stream stayed open for the run's length (but for a
# newcomer past MAX_EVENT_STREAMS), its connection's buffers full (~2 MB in the server's kernel,
# as much in the browser): a frozen Chromium tab woken after 40 s replayed ~100 stale states
# (~49 kB each) for 5 s before it showed the current one. Ended, the page's EventSource
# reconnects when the tab wakes and is sent the current state at once. (Counted from when its
# write is held, its buffers full: ~40 s of a frozen tab at those figures, so only a tab frozen
# for ~70 s or more is cured of the replay; one woken sooner still replays.) A page that reads, however
# slowly (some of its state taken each interval), or hidden but not frozen (Chromium reads on),
# is never ended.
STOPPED_READING_FOR = 30.0
# struct tcp_info (linux/tcp.h, 4.2 on): its __u64 tcpi_bytes_acked's offset, and its size up to it
_BYTES_ACKED = 120
_TCP_INFO_SIZE = _BYTES_ACKED + 8
STATIC = Path(__file__).with_name("_static")
PAGES = {  # path -> (file, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


class EventStreams:
    """The event streams a server has open, at most MAX_EVENT_STREAMS
    (`_server.py`), and its stop. A stream answers a request for as long
    as it lasts, so the server's connection cap never closes it: 64 of them
    (64 tabs, or a stranger) left no room for a scrape. Past the limit a new
    stream ends another, its connection closed (`_displaced`): a scrape
    always finds a connection to replace.
    (Refusing the newcomer, 503, left a stranger's streams keeping every
    page away, and a refused EventSource never tries again.)"""

    def __init__(self) -> None:
        from ._server import MAX_EVENT_STREAMS

        self._limit = MAX_EVENT_STREAMS
        # a stream's end -> its peer's address and its connection, oldest first
        self._open: dict[asyncio.Event, tuple[str, asyncio.BaseTransport | None]] = {}
        # a stream's end -> when a write it still holds marks its client as one that stopped
        # reading (`caught_up`)
        self._patient_until: dict[asyncio.Event, float] = {}
        # a timer on the server's loop while a stream is open (`_tick`): when it is due, and the
        # loop's held time counted up to when (`_patience`)
        self._ticking: asyncio.TimerHandle | None = None
        # a stream's end -> the bytes its client had taken at the last tick (`_tick`, `_taken`)
        self._taken: dict[asyncio.Event, int] = {}
        self._due = self._counted = 0.0
        self.stopping = False

    def _patience(self) -> float:
        """Now; where the loop's timer (`_tick`) is overdue, the loop was
        held (a step of a one-kernel run, whose loop serves the dashboard;
        a GC pause): what went past its due is no client's doing, and every
        stream's patience is moved on by it. A page's state being sent as
        the loop was held (its write waiting) was taken for one whose client
        had stopped reading, and ended by the next newcomer. (Not the time
        no stream called here: none calls either where every one is held in
        its write, and a stranger's streams, never read, left so a while,
        stayed patient, a page then ended in their place.)"""
        now = time.monotonic()
        held = now - max(self._due, self._counted)
        if self._ticking is not None and held > 0:
            self._counted = now
            for end in self._patient_until:
                self._patient_until[end] += held
        return now

    def _tick(self, interval: float) -> None:
        """Every interval while a stream is open: the loop's held time
        counted (`_patience`), and a stream whose client took some of what
        it was sent since the last tick is reading (`_taking`)."""
        now = self._due = self._patience()
        self._taking(now, interval)
        self._end_stopped(now)
        self._due += interval
        self._ticking = asyncio.get_running_loop().call_later(interval, self._tick, interval)

    def _taking(self, now: float, interval: float) -> None:
        """A stream whose client took more than at the last tick (`_taken`)
        is read, and is patient two intervals more. A page on a link slower
        than its states (one taking over two intervals to arrive) had its
        write held at each of its events (`caught_up`), and was ended by a
        stranger's newcomer past the limit, taken for one that stopped
        reading, before the stranger's own streams that were never read."""
        for end, (_, transport) in self._open.items():
            taken = _taken(transport)
            if taken > self._taken.get(end, taken):
                self._patient_until[end] = max(self._patient_until[end], now + 2 * interval)
            self._taken[end] = taken

    def _end_stopped(self, now: float) -> None:
        """End each stream whose client has taken nothing for
        STOPPED_READING_FOR seconds past its patience, its write held."""
        for end, (_, transport) in list(self._open.items()):
            if (transport is not None and transport.get_write_buffer_size()
                    and now > self._patient_until[end] + STOPPED_READING_FOR):
                self._end(end)

    def _end(self, end: asyncio.Event) -> None:
        """End a stream now: its connection closed (a client that stopped
        reading holds its write, and the stream, until then)."""
        transport = self._open.pop(end)[1]
        del self._patient_until[end]
        self._taken.pop(end, None)
        end.set()
        if transport is not None:
            transport.abort()

    def open(self, request, interval: float) -> asyncio.Event:
        """A new stream's end, set when it must end (replaced, or the server
        stopping); `interval`: the seconds between two of its events."""
        now = self._patience()
        if self._ticking is None:
            self._counted = now
            self._tick(interval)
        if len(self._open) >= self._limit:
            self._end(self._displaced(now))
        end = asyncio.Event()
        if self.stopping:
            end.set()
        self._open[end] = (request.remote or "", request.transport)
        self._patient_until[end] = now + 2 * interval
        return end

    def caught_up(self, end: asyncio.Event, interval: float) -> None:
        """Before a stream's next event: a client that took all it was sent
        is reading, and a write it holds two intervals from now (an event
        not taken in an interval, or a write waiting that long) says it
        stopped."""
        now = self._patience()
        stream = self._open.get(end)
        if stream is not None and (stream[1] is None or not stream[1].get_write_buffer_size()):
            self._patient_until[end] = now + 2 * interval

    def _displaced(self, now: float) -> asyncio.Event:
        """The stream a new one past the limit ends: one whose client is
        gone (its stream ends at its next event, and counted till then, a
        tab reloaded with 32 open ended another tab's), else the oldest
        whose client stopped reading (its write held: a tab gone to sleep,
        a stranger), else the newest of the address holding the most. The newest, not the
        oldest: a server has no secret a page could show (it is
        unauthenticated), so what marks a page's stream is that it came
        first and is read; ending the oldest let a stranger with one stream
        from each of 32 addresses, or 32 from the page's own (a NAT, the
        same machine), end the page's. Now a stranger's newcomers end its
        own streams; a page opened after a stranger holds every stream is
        still ended by its next one (and reconnects).
        A write held alone does not say a client stopped reading: a page's
        state (~100 kB for 1,000 steps) is held as it is being sent, and a
        newcomer then ended the page's (`caught_up`)."""
        for end, (_, transport) in self._open.items():
            if transport is None or transport.is_closing():
                return end
        for end, (_, transport) in self._open.items():
            if transport is not None and transport.get_write_buffer_size() and now > self._patient_until[end]:
                return end
        held = Counter(address for address, _ in self._open.values())
        most = max(held.values())
        return next(end for end, (address, _) in reversed(self._open.items()) if held[address] == most)

    def close(self, end: asyncio.Event) -> None:
        self._open.pop(end, None)
        self._patient_until.pop(end, None)
        self._taken.pop(end, None)
        if not self._open and self._ticking is not None:
            self._ticking.cancel()
            self._ticking = None

    def stop(self) -> None:
        """The server stops: every stream sends its last event and ends."""
        self.stopping = True
        for end in self._open:
            end.set()


def _taken(transport: asyncio.BaseTransport | None) -> int:
    """How much a stream's client has taken: the bytes its connection's
    peer acknowledged (TCP_INFO's tcpi_bytes_acked), where it can be read;
    else less the bytes it has still to send here. Those alone were counted
    (fewer than at the last tick: taking), but they drain in steps, not as
    the client reads: the socket takes more once its own buffer (the kernel
    grows it to megabytes) has half emptied, and an event written between
    two ticks adds to them. A page on a slow link read on for many intervals
    with them unchanged (a real Chromium over a link shaped to 100 kB/s,
    states of ~100 kB every 0.5 s: the same 100,100 bytes three ticks in a
    row), and a stranger's newcomer ended it, taken for one that stopped
    reading."""
    if transport is None:
        return 0
    sock = transport.get_extra_info("socket")
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (AttributeError, OSError):  # (no TCP_INFO; a connection closed meanwhile)
        info = b""
    if len(info) >= _TCP_INFO_SIZE:
        return struct.unpack_from("Q", info, _BYTES_ACKED)[0]
    return -transport.get_write_buffer_size()


async def server_sent_events(request, encoded, streams: EventStreams, interval: float,
                             last_event: str | None = None) -> web.StreamResponse:
    """Send `encoded()` (JSON bytes) as an event every `interval` seconds
    until the server stops (`streams.stop()`), then once more as
    `last_event` if given; or until a newer stream replaces this one
    (`EventStreams`)."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **NO_CACHE})
    try:
        await response.prepare(request)
    except ConnectionError:  # the page went away before its stream began (closed as it opened)
        return response
    end = streams.open(request, interval)
    try:
        while not end.is_set():
            streams.caught_up(end, interval)
            await response.write(b"data: " + encoded() + b"\n\n")
            try:
                await asyncio.wait_for(end.wait(), interval)
            except TimeoutError:
                pass
        if last_event is not None and streams.stopping:
            await response.write(f"event: {last_event}\ndata: ".encode() + encoded() + b"\n\n")
    except ConnectionError:  # the page went away (reset as a write waited: aiohttp's ConnectionError)
        pass
    finally:
        streams.close(end)
    return response


def dashboard_app(collect, describe, started: float | None = None,
                  outcome: dict | None = None) -> web.Application:
    """`collect()`: the kernels' metrics snapshots; `describe()`: the graph
    as plain data, or None while no kernel has described it yet; `started`:
    the run's start (wall seconds; now if not given); `outcome`: how the run
    ended, filled in before the server stops (`run_outcome`) and sent with
    the states from then on, the last one the page reads."""
    streams = EventStreams()
    if started is None:  # one kernel: the server starts with the run
        started = time.time()
    if outcome is None:
        outcome = {}

    def state() -> bytes:
        current = dashboard_state(collect(), time.time())
        current["started"] = started
        current.update(outcome)
        return json.dumps(current, allow_nan=False).encode()

    async def metrics(_request):
        return web.Response(body=render(collect()).encode(), headers={"Content-Type": CONTENT_TYPE})

    async def graph(_request):
        described = describe()
        if described is None:
            return web.json_response({"error": "no kernel has described its graph yet"}, status=503)
        return web.json_response(described)

    async def current(_request):
        return web.Response(body=state(), content_type="application/json")

    async def events(request):
        # when the run has ended: its last figures, then the page stops listening
        return await server_sent_events(request, state, streams, UPDATE_INTERVAL, last_event="end")

    def page(name: str, content_type: str):
        body = (STATIC / name).read_bytes()

        async def handler(_request):
            return web.Response(body=body, headers={"Content-Type": content_type, **NO_CACHE})

        return handler

    async def on_shutdown(_app):
        streams.stop()

    app = web.Application()
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/graph", graph)
    app.router.add_get("/api/state", current)
    app.router.add_get("/api/events", events)
    for path, (name, content_type) in PAGES.items():
        app.router.add_get(path, page(name, content_type))
    return app

