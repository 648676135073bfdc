"""Session 42: a connection's reader (`kernel.system._wire.Session.run`,
the coordinator's side of every command's and app's connection) that comes
to a peer's ping after the connection's end ends as on any end: its
waiters get ConnectionLost, and run() returns.

aiohttp answers a ping within receive() (its autoping), and on a server's
websocket that answer is written even where the transport is closing: the
reader raised ClientConnectionResetError ("Cannot write to closing
transport"), a stray ConnectionResetError out of run(), not the end of the
connection its callers handle (the peer's ping and its end read together:
a client that pinged, `keep_heard`, and was killed while the coordinator's
loop was busy).

A real aiohttp server on loopback whose handler reads with a Session once
the client has pinged and broken its socket (shutdown, no close frame)."""

from __future__ import annotations

import asyncio
import os
import socket

import aiohttp
from aiohttp import web
from kernel.net._links import PATH

from kernel.system._wire import ConnectionLost, Session
from tests.net._websocket_servers import websocket_server


async def _no_requests(op, message):
    return None


def test_a_ping_read_after_the_connections_end_ends_the_session_not_with_a_stray_error():
    async def scenario() -> tuple[str, str]:
        outcome: asyncio.Future = asyncio.get_running_loop().create_future()

        async def handler(request):
            ws = web.WebSocketResponse(autoping=True)
            await ws.prepare(request)
            session = Session(ws, _no_requests, "a client")
            waiting = asyncio.get_running_loop().create_future()  # (a request under way)
            session._waiting[1] = waiting
            # (busy meanwhile: the ping and the end come before it reads)
            while request.transport is not None and not request.transport.is_closing():
                await asyncio.sleep(0.01)
            try:
                await session.run()
                outcome.set_result(("returned", type(waiting.exception()).__name__))
            except BaseException as exc:
                outcome.set_result(("raised", repr(exc)))
            return ws

        async with websocket_server(handler) as port, aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{port}{PATH}")
            await ws.ping()
            sock = ws.get_extra_info("socket")
            with socket.socket(fileno=os.dup(sock.fileno())) as own:  # (as a killed process's)
                own.shutdown(socket.SHUT_RDWR)
            return await asyncio.wait_for(outcome, 5)

    assert asyncio.run(scenario()) == ("returned", ConnectionLost.__name__)
