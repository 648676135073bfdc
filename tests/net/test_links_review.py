"""Review tests for the authenticated websocket links between machines:
real servers and real sockets on loopback (no mock of the links)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from _websocket_servers import websocket_server
from aiohttp import web
from kernel.net._links import PATH, LinkError, LinkServer
from kernel.net._links import connect as links_connect

SECRET = "s3cret-for-review"
NESTED = "[" * 4000  # 4,000 bytes: within the 4 KiB a stranger may send before authenticating


async def test_a_strangers_deeply_nested_json_handshake_is_a_logged_refusal_not_an_error_traceback(caplog):
    """README, Several machines, Bad input: a stranger's bad input closes
    its connection and is logged as `refused a link from ADDRESS: ...`,
    rate-limited (the first 10 of every 5 s, then a count), "so a stranger
    connecting in a loop cannot fill the disk". A handshake message of
    4,000 '[' (no secret needed: it is the stranger's first message) makes
    `msgspec.json.decode` in `AuthenticatedServer._handshake` raise
    RecursionError, which `_accept` does not catch (only
    AuthenticationFailed, LinkError, msgspec.DecodeError): aiohttp logs an
    ERROR with a full traceback for every such connection, none of them
    counted or rate-limited, and the connection is dropped (1006) rather
    than refused (1002). Expected: one `refused a link from 127.0.0.1: ...`
    line per connection (at most 10 in 5 s), no ERROR."""
    server = LinkServer("127.0.0.1", 0, SECRET, 0, {0}, lambda peer: (lambda *frame: None))
    await server.start()
    strangers = 12
    try:
        with caplog.at_level(logging.WARNING):
            async with aiohttp.ClientSession() as session:
                for _ in range(strangers):
                    ws = await session.ws_connect(f"http://127.0.0.1:{server.port}{PATH}")
                    challenge = await ws.receive(timeout=5)
                    assert challenge.type is aiohttp.WSMsgType.TEXT
                    await ws.send_str(NESTED)
                    await ws.receive(timeout=5)  # the server's answer: its close
                    await ws.close()
            deadline = asyncio.get_running_loop().time() + 5
            while server.pending and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        first = errors[0] if errors else None
        assert not errors, (f"{len(errors)} ERROR records (the first: {first.name}: {first.getMessage()}; "
                            f"{first.exc_info and first.exc_info[0].__name__})")
        refusals = [r.getMessage() for r in caplog.records if r.name == "kernel.links"
                    and r.getMessage().startswith("refused a link from 127.0.0.1")]
        assert 1 <= len(refusals) <= 10, refusals  # (past 10 in 5 s: counted, said when the period ends)
    finally:
        await server.stop()


async def test_a_server_whose_challenge_is_deeply_nested_json_is_a_link_error_for_the_dialer():
    """`connect` turns a server's garbage handshake into a LinkError ("broke
    the handshake"): something else listening on a peer's port (another
    program, a squatter) must be a clear link error, never an exception of
    the decoder's. A challenge of 4,000 '[' makes `_client_handshake`'s
    `msgspec.json.decode` raise RecursionError, which `connect` lets out
    as it is (its except names DecodeError, KeyError, TypeError, ... but
    not RecursionError)."""

    async def squatter(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(NESTED)
        await ws.receive()
        return ws

    async with websocket_server(squatter) as port:
        with pytest.raises(LinkError, match="handshake"):
            await links_connect(f"http://127.0.0.1:{port}", SECRET, 1, timeout=3)
