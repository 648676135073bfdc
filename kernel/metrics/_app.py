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
import time
from pathlib import Path

from aiohttp import web

from ._dashboard import dashboard_state
from ._exposition import CONTENT_TYPE, render

NO_CACHE = {"Cache-Control": "no-cache"}  # a new version of the package serves a new page
UPDATE_INTERVAL = 0.5  # seconds between two states a dashboard is sent
STATIC = Path(__file__).with_name("_static")
PAGES = {  # path -> (file, content type)
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


async def server_sent_events(request, encoded, stopping: asyncio.Event, interval: float,
                             last_event: str | None = None) -> web.StreamResponse:
    """Send `encoded()` (JSON bytes) as an event every `interval` seconds
    until `stopping` is set, then once more as `last_event` if given."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **NO_CACHE})
    await response.prepare(request)
    try:
        while not stopping.is_set():
            await response.write(b"data: " + encoded() + b"\n\n")
            try:
                await asyncio.wait_for(stopping.wait(), interval)
            except TimeoutError:
                pass
        if last_event is not None:
            await response.write(f"event: {last_event}\ndata: ".encode() + encoded() + b"\n\n")
    except ConnectionResetError:  # the page went away
        pass
    return response


def dashboard_app(collect, describe, started: float | None = None,
                  outcome: dict | None = None) -> web.Application:
    """`collect()`: the kernels' metrics snapshots; `describe()`: the graph
    as plain data, or None while no kernel has described it yet; `started`:
    the run's start (wall seconds; now if not given); `outcome`: how the run
    ended, filled in before the server stops (`run_outcome`) and sent with
    the states from then on, the last one the page reads."""
    stopping = asyncio.Event()
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
        return await server_sent_events(request, state, stopping, UPDATE_INTERVAL, last_event="end")

    def page(name: str, content_type: str):
        body = (STATIC / name).read_bytes()

        async def handler(_request):
            return web.Response(body=body, headers={"Content-Type": content_type, **NO_CACHE})

        return handler

    async def on_shutdown(_app):
        stopping.set()

    app = web.Application()
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/graph", graph)
    app.router.add_get("/api/state", current)
    app.router.add_get("/api/events", events)
    for path, (name, content_type) in PAGES.items():
        app.router.add_get(path, page(name, content_type))
    return app

