"""A small aiohttp websocket server on loopback that plays a peer of a
link's dialler (hostile, dying, silent), for the dialler's tests, or
serves a handler a test reads a server's websocket with."""

from __future__ import annotations

import contextlib

from aiohttp import web
from kernel.net._links import PATH


@contextlib.asynccontextmanager
async def websocket_server(handler):
    """aiohttp serving `handler(request)` at PATH on a free loopback port:
    yields the port, and stops it (the port free for another) on leaving."""
    app = web.Application()
    app.router.add_get(PATH, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()
