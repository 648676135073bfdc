"""Session 43: a connection to a TLS port that goes before sending a byte
(a port check; the start-up probe of a job's peers, `_relay._refuses`) asked
for nothing, and is let go in silence, as a plain port does: the TLS
handshake begun as it came failed on it, `refused a link from 127.0.0.1:
TLS handshake failed (ConnectionResetError)` in the log at every probe. A
handshake now begins with the connection's first bytes: one begun and then
cut is still a refusal, and so is a connection silent until the time limit.
On asyncio's loop and on uvloop's (the links' relay)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import pytest
import uvloop
from test_links import closed_by_server, links_over_tls, start_server, tls_contexts, until

TIME_LIMIT = 0.5  # seconds: the server's handshake_timeout


def refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]


async def gone_after_the_server_saw_it(server, sock: socket.socket, reset: bool = False) -> None:
    """`sock`, connected to `server`, closed (or reset) once the server holds
    it pending; back once the server has let it go."""
    await until(lambda: server.pending == 1)
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    await until(lambda: server.pending == 0)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connection_that_sent_nothing_is_let_go_in_silence_and_a_handshake_begun_is_not(
        tmp_path, caplog, loop):
    server_context, client = tls_contexts(tmp_path)

    async def scenario():
        received = []
        server = await start_server(received, ssl_context=server_context, handshake_timeout=TIME_LIMIT)
        try:
            for reset in (False, True):  # closed, then reset, before a byte
                sock = socket.create_connection(("127.0.0.1", server.port))
                await gone_after_the_server_saw_it(server, sock, reset)
            assert refusals(caplog) == []
            begun = socket.create_connection(("127.0.0.1", server.port))
            begun.sendall(b"\x16\x03\x01")  # (a handshake record's head, then nothing more)
            await gone_after_the_server_saw_it(server, begun)
            await until(lambda: len(refusals(caplog)) == 1)
            assert refusals(caplog)[0].startswith("refused a link from 127.0.0.1: TLS handshake failed ")
            silent, _ = await asyncio.open_connection("127.0.0.1", server.port)
            assert await closed_by_server(silent, within=TIME_LIMIT + 3.0) == b""
            await until(lambda: len(refusals(caplog)) == 2)
            assert refusals(caplog)[1] == ("refused a link from 127.0.0.1: no handshake within 0.5 s of "
                                           "connecting (it sent no TLS handshake)")
            await links_over_tls(server, client, received, b"a peer still links")
            assert server.pending == 0
        finally:
            await server.stop()

    with caplog.at_level(logging.WARNING, logger="kernel.links"):
        (uvloop.run if loop == "uvloop" else asyncio.run)(scenario())
