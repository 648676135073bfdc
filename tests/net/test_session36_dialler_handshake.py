"""Session 36's review of the dialling side of a link before the server has
authenticated: whatever answers at a peer's address (a stranger, another
program, a server without the secret) costs the dialler little, and ends
the dial promptly with an error that says what answered. Real sockets: a
small aiohttp or asyncio server in each test plays the hostile listener."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from aiohttp import web
from kernel.net._links import PATH, AuthenticationFailed, LinkRefused, NotAKernelServer, connect

SECRET = "dialler-review-secret"


@contextlib.asynccontextmanager
async def _websocket_server(behaviour):
    """A websocket server at PATH whose connections run `behaviour(ws)`,
    then hold the connection open, reading nothing (so answering no close
    frame), until the test ends. Yields its URL."""
    done = asyncio.Event()

    async def handler(request):
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        await behaviour(ws)
        await done.wait()
        return ws

    app = web.Application()
    app.router.add_get(PATH, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        done.set()
        await runner.cleanup()


async def _wrong_answer(ws) -> None:
    await ws.send_str('{"process": 0, "nonce": "00"}')
    await ws.receive()  # the dialler's hello
    await ws.send_str('{"mac": "not the mac"}')


async def test_a_server_that_answers_a_wrong_mac_and_no_close_frame_is_refused_at_once_as_such():
    """A listener without the secret answered the dialler's hello with a
    wrong mac and then read nothing: the dialler's close waited aiohttp's
    10 s for a close frame, past the handshake's time, and the dial ended
    at its timeout as `did not finish the handshake in time`, not as the
    `authentication failed` it was."""
    async with _websocket_server(_wrong_answer) as url:
        started = time.monotonic()
        with pytest.raises(AuthenticationFailed, match="authentication failed with process 0 at"):
            await connect(url, SECRET, 1, timeout=4)
        assert time.monotonic() - started < 3


async def test_a_garbage_hello_from_a_server_that_reads_nothing_ends_the_dial_within_its_timeout():
    """The same wait, after a garbage hello: a dial with a timeout of 4 s
    took 10.6 s."""

    async def garbage(ws) -> None:
        await ws.send_str("not json at all")

    async with _websocket_server(garbage) as url:
        started = time.monotonic()
        with pytest.raises(Exception, match="handshake"):
            await connect(url, SECRET, 1, timeout=4)
        assert time.monotonic() - started < 3


async def _read_on(ws) -> None:
    async for _ in ws:  # (answers the dialler's close frame)
        pass


@pytest.mark.parametrize("hello", ["not json at all", "[1, 2]", '{"process": 0, "nonce": 5}', b"\x00" * 8])
async def test_a_server_whose_hello_is_garbage_is_another_program_said_at_once(hello):
    """A hello that is not JSON, not an object, with a nonce that is not a
    string, or binary: the dialler's error was a LinkRefused, `broke the
    handshake (TypeError: list indices must be integers ...)`, which a
    cluster said as `could not reach process 0 at ... within 30 s: ... (it
    closed the connection before answering: TLS on there and off here, or
    too many connections pending there?)`: reached at once, nothing
    closed. Now what the link says of another program on a peer's port."""

    async def garbage(ws) -> None:
        await (ws.send_str(hello) if isinstance(hello, str) else ws.send_bytes(hello))
        await _read_on(ws)

    async with _websocket_server(garbage) as url:
        with pytest.raises(NotAKernelServer) as raised:
            await connect(url, SECRET, 1, timeout=4)
    said = str(raised.value)
    assert said.startswith(f"{url} answered, but not as a kernel server (it "), said
    assert ("a BINARY message" if isinstance(hello, bytes) else "broke the handshake: ") in said, said


async def test_a_server_that_closes_before_its_hello_is_still_a_refusal():
    """(Not another program: a kernel server stopping, or at its time limit.)"""

    async def close_at_once(ws) -> None:
        await ws.close()

    async with _websocket_server(close_at_once) as url:
        with pytest.raises(LinkRefused, match="did not start the handshake"):
            await connect(url, SECRET, 1, timeout=4)
