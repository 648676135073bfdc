"""Session 43: a dial's try that ran out of time said "it accepted the
connection but never answered" whatever had happened, also where nothing
accepted it: a connection whose SYN nobody answered (a firewall dropping
it, a host gone, a listener whose backlog is full). It says now which: the
TCP connect (or, on https, its TLS handshake) never completed, or the
connection was made and then left silent. (A listener that never calls
accept() is the second: the kernel completes the connection for it.)"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiohttp
import pytest
from kernel.net._links import LinkError, connect
from test_links import tls_contexts

NEVER_CONNECTED = "the connection was never answered (its TCP connect timed out"
NEVER_COMPLETED = "the connection was never completed (no answer to its TCP connect or its TLS handshake)"
SILENT = "it accepted the connection but never answered"
UNKNOWN = "no answer (to the connection, or on it)"


@contextlib.contextmanager
def full_listener():
    """A loopback listener whose backlog is full: the kernel drops a new
    connection's SYN, as a firewall's DROP or a host gone would."""
    queued = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        try:
            for _ in range(16):  # (the kernel queues backlog + 1 before it drops)
                sock = socket.socket()
                sock.settimeout(0.05)
                try:
                    sock.connect(address)
                except TimeoutError:
                    sock.close()
                    break
                queued.append(sock)
            else:
                pytest.fail("the listener's backlog never filled")
            yield address[1]
        finally:
            for sock in queued:
                sock.close()


@contextlib.contextmanager
def unaccepting_listener():
    """A loopback listener that never calls accept(): the kernel accepts
    for it, and nothing answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


async def said(url: str, **options) -> str:
    with pytest.raises(LinkError) as caught:
        await connect(url, b"s" * 32, 1, timeout=0.3, **options)
    return str(caught.value)


async def test_a_connection_nobody_answered_is_not_said_to_be_accepted():
    with full_listener() as port:
        error = await said(f"http://127.0.0.1:{port}")
    assert NEVER_CONNECTED in error and SILENT not in error, error
    assert error.startswith(f"could not reach http://127.0.0.1:{port} within 0.3 s: "), error


async def test_a_tls_connection_nobody_answered_says_its_handshake_may_be_the_silent_part(tmp_path):
    _, client = tls_contexts(tmp_path)
    with full_listener() as port:
        error = await said(f"https://127.0.0.1:{port}", ssl=client)
    assert NEVER_COMPLETED in error, error
    with unaccepting_listener() as port:  # (connected, the TLS handshake unanswered)
        error = await said(f"https://127.0.0.1:{port}", ssl=client)
    assert NEVER_COMPLETED in error, error


async def test_a_connection_made_and_left_silent_is_said_to_be_accepted():
    with unaccepting_listener() as port:
        assert SILENT in await said(f"http://127.0.0.1:{port}")


async def test_a_server_that_accepts_and_says_nothing_is_said_to_be_accepted():
    held = []

    async def hold(reader, writer):
        held.append(writer)  # (never answers, never closes, until the test ends)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        error = await said(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert SILENT in error and len(held) == 1, error


async def test_a_session_of_the_callers_claims_neither():
    """A caller's session has no trace of the dial's: nobody knows whether
    the connection was made, and the error says no more than that."""
    async with aiohttp.ClientSession() as session:
        with full_listener() as port:
            assert UNKNOWN in await said(f"http://127.0.0.1:{port}", session=session)
        with unaccepting_listener() as port:
            assert UNKNOWN in await said(f"http://127.0.0.1:{port}", session=session)
