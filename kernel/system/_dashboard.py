"""The system's dashboard: `python -m kernel coordinator --dashboard HOST:PORT`.

    /             the page (`_static/system.html`: plain HTML and script
                  shipped with the package, nothing fetched from elsewhere)
    /api/system   the catalog as the job master sees it: executors, jobs
                  (with each process's own dashboard, where its executor
                  gave it one), topics with their publishers and subscribers
    /api/events   the same as server-sent events, every UPDATE_INTERVAL

Read-only, and unauthenticated as a job's own dashboard is (what it shows
is what `status` prints): bind it where those who may see it can reach it
(the default of the command is none, and 127.0.0.1 is a good choice).
"""

from __future__ import annotations

import json
from pathlib import Path

from aiohttp import web

from kernel.metrics._app import NO_CACHE, EventStreams, server_sent_events

UPDATE_INTERVAL = 1.0  # seconds between two states the page is sent
PAGE = Path(__file__).with_name("_static") / "system.html"


def system_app(state) -> web.Application:
    """`state()`: the system as plain data (`JobMaster.status()`)."""
    streams = EventStreams()
    page_body = PAGE.read_bytes()

    def encoded() -> bytes:
        return json.dumps(state(), allow_nan=False).encode()

    async def page(_request):
        return web.Response(body=page_body, headers={"Content-Type": "text/html; charset=utf-8", **NO_CACHE})

    async def current(_request):
        return web.Response(body=encoded(), content_type="application/json")

    async def events(request):
        return await server_sent_events(request, encoded, streams, UPDATE_INTERVAL)

    async def on_shutdown(_app):
        streams.stop()

    app = web.Application()
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", page)
    app.router.add_get("/api/system", current)
    app.router.add_get("/api/events", events)
    return app


def dashboard_socket(host: str, port: int):
    """The dashboard's listening socket, bound before the coordinator starts
    (MetricsServerError, as for a job's --dashboard, where it cannot be:
    a port taken was a traceback once the coordinator already listened)."""
    from kernel.metrics._server import listen

    return listen((host, port))


async def serve_dashboard(sock, state) -> web.AppRunner:
    """Start serving on `sock` (`dashboard_socket`); the caller cleans the
    returned runner up. Its shutdown waits 0.5 s at most for the event
    streams (`SHUTDOWN_TIMEOUT` twice; aiohttp's default, 60 s twice: a
    client that stopped reading held a coordinator's stop up for two
    minutes, and 1 s held it 2 s). Open connections are capped, idle ones
    closed, as a job's own dashboard's are (`start_runner`)."""
    from kernel.metrics._server import start_runner

    return await start_runner(system_app(state), sock)
