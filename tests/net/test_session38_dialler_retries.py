"""Session 38's review of a dialler whose handshake breaks after the
websocket upgrade, before authenticating: a peer starting (or dying and
restarting) while the cluster starts is dialled again, as one refusing
before the upgrade, within the dial's timeout; what no retry mends (a
wrong secret, a process id refused) stays final, at once. Real sockets: an
aiohttp server in each test plays the peer that breaks the handshake, then
a real LinkServer takes its port."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from _websocket_servers import websocket_server
from aiohttp import web
from kernel.net._links import AuthenticationFailed, LinkError, LinkServer, connect

SECRET = "dialler-retries-secret"
TIMEOUT = 20.0  # the dial's: generous, the tests end long before it


@contextlib.asynccontextmanager
async def _breaking_server(behaviour):
    """A websocket server at PATH whose connections run `behaviour(request,
    ws)` once upgraded. Yields (its port, an event set once a connection
    has run it), and stops it (its port free for another) on leaving."""
    broke = asyncio.Event()

    async def handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await behaviour(request, ws)
        broke.set()
        return ws

    async with websocket_server(handler) as port:
        yield port, broke


async def _closes_at_once(request, ws) -> None:  # a server stopping as it upgrades
    await ws.close(code=1001)


async def _dies_after_the_upgrade(request, ws) -> None:  # its process gone: a reset, no close frame
    request.transport.abort()


async def _dies_after_reading_the_hello(request, ws) -> None:
    await ws.send_str('{"process": 0, "nonce": "00"}')
    await ws.receive()
    request.transport.abort()


@pytest.mark.parametrize("behaviour",
                         [_closes_at_once, _dies_after_the_upgrade, _dies_after_reading_the_hello],
                         ids=["closes at once", "dies after the upgrade", "dies after reading the hello"])
async def test_a_handshake_broken_after_the_upgrade_is_dialled_again_until_the_peer_is_up(behaviour):
    """The peer's port answered the upgrade, then the handshake broke: the
    dial ended at once (`did not start the handshake`, `broke the
    handshake (closed, code 1006, before answering)`), and with it a
    cluster's start, though the peer was starting and its start-up timeout
    had 30 s left. Now tried again, and linked once the peer is up."""
    async with _breaking_server(behaviour) as (port, broke):
        dialling = asyncio.ensure_future(connect(f"http://127.0.0.1:{port}", SECRET, 1, timeout=TIMEOUT))
        await broke.wait()
    # the peer restarted on the same port
    server = LinkServer("127.0.0.1", port, SECRET, 0, {0}, lambda peer: (lambda *frame: None))
    await server.start()
    try:
        ws, peer, _, session = await asyncio.wait_for(dialling, TIMEOUT)
        assert peer == 0 and not ws.closed
        await ws.close()
        await session.close()
    finally:
        dialling.cancel()
        await server.stop()


@pytest.mark.parametrize("case", ["wrong secret", "process id refused"])
async def test_a_wrong_secret_or_a_refused_process_id_is_still_final_at_once(case):
    """What no retry mends is not retried for the dial's timeout: one try,
    its error said at once."""
    server = LinkServer("127.0.0.1", 0, SECRET, 0, {0}, lambda peer: (lambda *frame: None),
                        expected={1} if case == "wrong secret" else {2})
    await server.start()
    try:
        started = time.monotonic()
        with pytest.raises(LinkError) as raised:
            await connect(f"http://127.0.0.1:{server.port}", "not the secret" if case == "wrong secret"
                          else SECRET, 1, timeout=TIMEOUT)
        assert time.monotonic() - started < TIMEOUT / 2
        assert len(server.failures) == 1  # one try
    finally:
        await server.stop()
    if case == "wrong secret":
        assert isinstance(raised.value, AuthenticationFailed)
    else:
        assert "refused this process (1): process 1 is not a peer of this process there" in str(raised.value)


async def test_a_server_that_upgrades_and_never_says_hello_is_given_up_per_try_then_dialled_again():
    """A server that upgraded and then said nothing (a peer stopped or
    stuck as it started, another program) held the dial for its whole
    timeout (a cluster's 30 s), though a server gives up on a silent
    dialler after 5 s: now each try's handshake has `handshake_timeout`
    seconds (HANDSHAKE_TIMEOUT, 5 s, by default), and the dial goes on,
    here to the peer once it is up."""
    held = asyncio.Event()

    async def silent(request, ws) -> None:
        async for _ in ws:  # until the dialler gives up (its close frame, answered)
            pass
        held.set()

    async with _breaking_server(silent) as (port, _):
        started = time.monotonic()
        dialling = asyncio.ensure_future(connect(f"http://127.0.0.1:{port}", SECRET, 1, timeout=TIMEOUT,
                                                 handshake_timeout=0.5))
        await asyncio.wait_for(held.wait(), TIMEOUT)
    server = LinkServer("127.0.0.1", port, SECRET, 0, {0}, lambda peer: (lambda *frame: None))
    await server.start()
    try:
        ws, peer, _, session = await asyncio.wait_for(dialling, TIMEOUT)
        assert time.monotonic() - started < TIMEOUT / 2  # (not held for the dial's timeout)
        assert peer == 0
        await ws.close()
        await session.close()
    finally:
        dialling.cancel()
        await server.stop()

