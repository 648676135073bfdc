"""Session 39 review of the dual-stack link port an executor prepares for a
job process on a host name (1895660, `_listening_everywhere`): there an
IPv4 peer's address is ::ffff:a.b.c.d, and every refusal named it so
(`refused a link from ::ffff:127.0.0.1: ...`, a twin's `one at
::ffff:...`), where the process, listening on 0.0.0.0 itself, said
127.0.0.1. It is said as its user knows it again."""

from __future__ import annotations

import asyncio
import logging
import socket

from kernel.net._links import AuthenticationFailed, LinkServer, dial

from kernel.system._executor import _listening_everywhere

SECRET = "mapped-review-secret"


async def test_an_ipv4_peer_of_a_dual_stack_link_port_is_named_by_its_ipv4_address(caplog):
    sock = _listening_everywhere()
    port = sock.getsockname()[1]
    assert sock.family == socket.AF_INET6  # (this machine has IPv6: the IPv4 peers are mapped)
    server = LinkServer("", port, SECRET, 0, {0}, lambda peer: lambda *frame: None, expected={1}, sock=sock)
    await server.start()
    try:
        with caplog.at_level(logging.WARNING):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 404")
            writer.close()
            try:
                await dial(f"http://127.0.0.1:{port}", "not-the-secret", 1, {0}, lambda *frame: None,
                           timeout=5)
            except AuthenticationFailed:
                pass
            else:
                raise AssertionError("a wrong secret was let in")
        refusals = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")]
        assert len(refusals) == 2, refusals
        assert all("from 127.0.0.1:" in said and "::ffff:" not in said for said in refusals), refusals
    finally:
        await server.stop()
