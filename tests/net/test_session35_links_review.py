"""Session 35's review of the links, with real sockets: a dialler the
server does not take (a process already linked, one that should not dial
it) is told why in the handshake; a link whose frames take longer than two
heartbeats to arrive (a slow network, a large frame) is alive, not dead."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from kernel.net._links import LinkError, LinkServer, dial

SECRET = "links-review-secret"


def test_a_dialer_the_server_does_not_take_is_told_why_and_the_server_goes_on(caplog):
    async def scenario():
        received = []

        def on_frame_for(peer):
            return lambda channel, kind, body: received.append((peer, channel, bytes(body)))

        server = LinkServer("127.0.0.1", 0, SECRET, 0, {0}, on_frame_for, expected={1})
        await server.start()
        url = f"http://127.0.0.1:{server.port}"
        link, session = await dial(url, SECRET, 1, {0}, lambda *frame: None, timeout=5)
        reader = asyncio.ensure_future(link.run())
        try:
            errors = []
            for process in (1, 2):
                with pytest.raises(LinkError) as caught:
                    await dial(url, SECRET, process, {0}, lambda *frame: None, timeout=5)
                errors.append(str(caught.value))
            await link.send(0, 1, b"still linked")
            deadline = time.monotonic() + 10
            while not received:
                assert time.monotonic() < deadline, "the linked peer's frame never came"
                await asyncio.sleep(0.005)
            assert received == [(1, 0, b"still linked")]
            assert not reader.done()
            return errors
        finally:
            await link.close()
            await session.close()
            await server.stop()

    with caplog.at_level(logging.WARNING, logger="kernel.links"):
        errors = asyncio.run(scenario())
    port = errors[0].split("127.0.0.1:")[1].split(" ")[0]
    assert errors == [
        f"process 0 at http://127.0.0.1:{port} refused this process (1): process 1 at 127.0.0.1 is already "
        "linked there (is --process-id 1 given to two processes, or do the --peers lists differ?)",
        f"process 0 at http://127.0.0.1:{port} refused this process (2): process 2 is not a peer of this "
        "process there (is --process-id 2 given to two processes, or do the --peers lists differ?)"]
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")] == [
        "refused a link from 127.0.0.1: process 1 at 127.0.0.1 is already linked",
        "refused a link from 127.0.0.1: process 2 is not a peer of this process"]


async def _throttled(reader, writer, rate: float) -> None:
    """Forwards what `reader` gives to `writer`, `rate` bytes a second."""
    try:
        while data := await reader.read(16384):
            writer.write(data)
            await writer.drain()
            await asyncio.sleep(len(data) / rate)
    except ConnectionError:
        pass
    finally:
        writer.close()


def test_a_frame_that_takes_longer_than_two_heartbeats_to_arrive_keeps_the_link(caplog):
    """The heartbeat heard whole messages only: a frame of 1 MiB through a
    network of 1 MiB/s (a proxy, both ways) with a heartbeat of 0.1 s ended
    the link as `process 1 did not answer for 0.2 s` on the receiving side
    (and, once that heard the bytes, on the sending side, whose PING waited
    behind the frame). Both ways, each frame arrives whole and both ends
    stay linked; a link whose peer is silent is still dropped (test_links)."""
    big = bytes(range(256)) * 4096  # 1 MiB

    async def scenario():
        received = []

        def on_frame_for(peer):
            return lambda channel, kind, body: received.append((peer, channel, bytes(body)))

        server = LinkServer("127.0.0.1", 0, SECRET, 0, {0}, on_frame_for, heartbeat=0.1)
        await server.start()
        pipes = []

        async def proxy_one(down_reader, down_writer):
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", server.port)
            pipes.extend([asyncio.ensure_future(_throttled(down_reader, up_writer, 1 << 20)),
                          asyncio.ensure_future(_throttled(up_reader, down_writer, 1 << 20))])

        proxy = await asyncio.start_server(proxy_one, "127.0.0.1", 0)
        got_back = []
        link, session = await dial(f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}", SECRET, 1, {0},
                                   lambda channel, kind, body: got_back.append(bytes(body)), heartbeat=0.1)
        reader = asyncio.ensure_future(link.run())
        try:
            started = time.monotonic()
            await link.send(0, 1, big)
            while not received and not link.closed.done():
                assert time.monotonic() < started + 60, "the frame never came"
                await asyncio.sleep(0.005)
            took = time.monotonic() - started
            assert not link.closed.done() and 1 in server.links, f"dropped: {link.error}"
            server_link = server.links[1]
            await server_link.send(0, 1, big)
            while not got_back and not link.closed.done():
                assert time.monotonic() < started + 120, "the frame back never came"
                await asyncio.sleep(0.005)
            assert not link.closed.done(), f"dropped: {link.error}"
            return received, got_back, took, link.error, server_link.error, reader.done()
        finally:
            await link.close()
            await session.close()
            await server.stop()
            proxy.close()
            for pipe in pipes:
                pipe.cancel()

    with caplog.at_level(logging.WARNING, logger="kernel.links"):
        received, got_back, took, error, server_error, ended = asyncio.run(scenario())
    assert took > 0.5  # (the frame took more than two heartbeats: the test tests something)
    assert (received, got_back) == ([(1, 0, big)], [big])
    assert (error, server_error, ended) == (None, None, False)
    assert "did not answer" not in caplog.text
