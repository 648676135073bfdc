"""Websocket links on loopback: authentication, multiplexed channels in
order, credit-based flow control, and bad input that closes one connection
while the server goes on."""

from __future__ import annotations

import asyncio
import logging
import socket

import aiohttp
import pytest

from net._links import (
    FRAME,
    KIND_PING,
    AuthenticationFailed,
    LinkError,
    LinkServer,
    dial,
)

SECRET = "s3cret-for-tests"
CHANNELS = {0, 1, 2}


async def start_server(received, secret=SECRET, **options):
    def on_frame_for(peer):
        return lambda channel, kind, body: received.append((peer, channel, kind, bytes(body)))

    server = LinkServer("127.0.0.1", 0, secret, 0, CHANNELS, on_frame_for, **options)
    await server.start()
    return server


def url(server) -> str:
    return f"http://127.0.0.1:{server.port}"


async def connect(server, secret=SECRET, process=1, **options):
    link, session = await dial(url(server), secret, process, CHANNELS, lambda *frame: None, **options)
    reader = asyncio.ensure_future(link.run())
    return link, session, reader


async def until(condition, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


async def test_frames_of_every_channel_arrive_in_order():
    received = []
    server = await start_server(received)
    link, session, _reader = await connect(server)
    try:
        assert link.peer == 0
        for i in range(30):
            await link.send(i % 3, 1, f"frame {i}".encode())
        await until(lambda: len(received) == 30)
        for channel in CHANNELS:
            mine = [body for _peer, ch, _kind, body in received if ch == channel]
            assert mine == [f"frame {i}".encode() for i in range(30) if i % 3 == channel]
        assert {peer for peer, *_ in received} == {1}
    finally:
        await link.close()
        await session.close()
        await server.stop()


async def test_a_slow_consumer_stops_its_sender_at_the_window():
    received = []
    frame = 100 - FRAME.size  # a body that makes a 100-byte frame
    server = await start_server(received, window=800)
    link, session, _reader = await connect(server, window=800)
    try:
        sends = [asyncio.ensure_future(link.send(0, 1, b"x" * frame)) for _ in range(20)]
        sender = asyncio.gather(*sends)
        await until(lambda: len(received) == 8)
        await asyncio.sleep(0.1)
        assert len(received) == 8 and not sender.done()  # no credit: the sender waits
        assert link.credit(0) == 0
        server_link = server.links[1]
        server_link.consumed(0, 800)  # the consumer catches up: credit flows back
        await until(lambda: len(received) == 16)
        server_link.consumed(0, 800)
        await until(lambda: len(received) == 20)
        await asyncio.wait_for(sender, 5)
    finally:
        await link.close()
        await session.close()
        await server.stop()


async def test_a_wrong_secret_is_refused_on_both_sides_and_never_logged(caplog):
    received = []
    server = await start_server(received)
    try:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(AuthenticationFailed, match="authentication failed"):
                await connect(server, secret="wrong-secret")
            await until(lambda: server.failures)
        assert isinstance(server.failures[0], AuthenticationFailed)
        assert SECRET not in caplog.text and "wrong-secret" not in caplog.text
        # the server goes on: a peer with the right secret still gets in
        link, session, _ = await connect(server)
        await link.send(2, 1, b"ok")
        await until(lambda: received == [(1, 2, 1, b"ok")])
        await link.close()
        await session.close()
    finally:
        await server.stop()


async def test_a_missing_secret_is_a_clear_error():
    with pytest.raises(ValueError, match="shared secret"):
        await dial("http://127.0.0.1:1", "", 1, CHANNELS, lambda *frame: None, timeout=0.1)


async def test_garbage_plain_http_and_bad_frames_close_that_connection_only(caplog):
    received = []
    server = await start_server(received, max_frame=1024)
    try:
        # garbage bytes on the socket
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"\x00\xffthis is not http\r\n\r\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) is not None
        writer.close()
        # a plain HTTP request
        async with aiohttp.ClientSession() as plain:
            async with plain.get(url(server) + "/kernel-link") as response:
                assert response.status >= 400
            async with plain.get(url(server) + "/") as response:
                assert response.status == 404
        # an authenticated peer that sends an unknown channel, then one that sends too much
        with caplog.at_level(logging.WARNING, logger="kernel.links"):
            link, session, reader_task = await connect(server, max_frame=1 << 20)
            await link.ws.send_bytes(FRAME.pack(99, 1) + b"x")
            with pytest.raises(LinkError):
                await asyncio.wait_for(reader_task, 5)
            await session.close()
            assert "unknown channel 99" in caplog.text
            link, session, reader_task = await connect(server, max_frame=1 << 20)
            await link.ws.send_bytes(FRAME.pack(0, 1) + b"y" * 4096)  # over the server's 1 KiB
            with pytest.raises(LinkError, match="code 1009"):  # "message too big"
                await asyncio.wait_for(reader_task, 5)
            await session.close()
        # the server still serves a well-behaved peer
        link, session, _ = await connect(server)
        await link.send(1, 1, b"fine")
        await until(lambda: (1, 1, 1, b"fine") in received)
        await link.close()
        await session.close()
    finally:
        await server.stop()


async def test_a_dialer_started_before_its_server_retries_until_it_is_up():
    received = []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def late_server():
        await asyncio.sleep(0.3)
        server = LinkServer("127.0.0.1", port, SECRET, 0, CHANNELS,
                            lambda peer: lambda *frame: received.append(frame))
        await server.start()
        return server

    starting = asyncio.ensure_future(late_server())
    link, session = await dial(f"http://127.0.0.1:{port}", SECRET, 1, CHANNELS, lambda *f: None,
                               timeout=10)
    server = await starting
    reading = asyncio.ensure_future(link.run())
    await link.send(0, 1, b"hello")
    await until(lambda: len(received) == 1)
    await link.close()
    await session.close()
    await server.stop()
    await reading


async def test_a_peer_that_never_comes_is_a_clear_error_after_the_timeout():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LinkError, match=r"could not reach .* within 0.3 s"):
        await dial(f"http://127.0.0.1:{port}", SECRET, 1, CHANNELS, lambda *f: None, timeout=0.3)


async def test_the_pull_api_yields_data_frames_and_handles_credit_on_the_way():
    """`async for` over a link: data frames in order, CREDIT frames from a
    consumer applied on the way (a small window keeps them flowing), PING
    answered, kinds above the control range handed over as data, and the
    iteration ends when the peer closes cleanly."""
    window = 300
    links = {}

    def on_frame_for(peer):
        def on_frame(channel, kind, body):  # an echo that grants credit as it goes
            link = links[peer]
            link.consumed(channel, link.size(body))
            return link.send(channel, kind, bytes(body) + b"!")
        return on_frame

    server = LinkServer("127.0.0.1", 0, SECRET, 0, CHANNELS, on_frame_for, window=window,
                        on_link=lambda link: links.__setitem__(link.peer, link))
    await server.start()
    link, session = await dial(url(server), SECRET, 1, CHANNELS, lambda *frame: None, window=window)
    try:
        frames = aiter(link)
        for i in range(40):  # 40 x ~60 bytes: credit must come back several times
            kind = 0x50 if i == 7 else 1
            await link.send(i % 3, kind, b"%02d" % i + b"." * 50)
            if i == 5:
                await link.ws.send_bytes(FRAME.pack(0, KIND_PING))  # answered by a PONG, not yielded
            channel, got_kind, body = await anext(frames)
            assert (channel, got_kind, bytes(body)) == (i % 3, kind, b"%02d" % i + b"." * 50 + b"!")
            link.consumed(channel, link.size(body))
        assert link.credit(0) > 0
        await links[1].close()
        with pytest.raises(StopAsyncIteration):
            await anext(frames)
        assert link.closed.done() and link.error is None
    finally:
        await link.close()
        await session.close()
        await server.stop()


async def test_a_frame_larger_than_the_window_goes_alone():
    received = []
    server = await start_server(received, window=100)
    link, session, _reader = await connect(server, window=100)
    try:
        await link.send(0, 1, b"a" * 10)
        sending = asyncio.ensure_future(link.send(0, 1, b"b" * 500))  # waits for the whole window
        await until(lambda: len(received) == 1)
        await asyncio.sleep(0.05)
        assert not sending.done()
        server.links[1].consumed(0, 50)  # half a window: a CREDIT frame of 50
        await asyncio.wait_for(sending, 5)
        await until(lambda: len(received) == 2)
        assert received[1] == (1, 0, 1, b"b" * 500) and link.credit(0) < 0
    finally:
        await link.close()
        await session.close()
        await server.stop()


async def test_a_sender_waiting_for_credit_fails_when_the_link_closes():
    received = []
    server = await start_server(received, window=100)
    link, session, _reader = await connect(server, window=100)
    try:
        await link.send(0, 1, b"a" * 95)
        sending = asyncio.ensure_future(link.send(0, 1, b"b"))
        await asyncio.sleep(0.05)
        assert not sending.done()
        await link.close()
        with pytest.raises(LinkError, match="closed"):
            await asyncio.wait_for(sending, 5)
    finally:
        await session.close()
        await server.stop()


async def test_text_and_short_frames_after_the_handshake_close_the_connection(caplog):
    received = []
    server = await start_server(received)
    try:
        with caplog.at_level(logging.WARNING, logger="kernel.links"):
            for bad in ("text", b"\x00\x01"):
                link, session, reader_task = await connect(server)
                if isinstance(bad, str):
                    await link.ws.send_str(bad)
                else:
                    await link.ws.send_bytes(bad)
                with pytest.raises(LinkError):
                    await asyncio.wait_for(reader_task, 5)
                await session.close()
        assert "malformed frame (TEXT)" in caplog.text and "malformed frame (BINARY)" in caplog.text
        link, session, _ = await connect(server)
        await link.send(1, 1, b"still fine")
        await until(lambda: (1, 1, 1, b"still fine") in received)
        await link.close()
        await session.close()
    finally:
        await server.stop()


async def test_heartbeats_keep_a_quiet_link_alive_and_find_a_silent_peer_dead(caplog):
    received = []
    server = await start_server(received, heartbeat=0.05)
    link, session, _reader = await connect(server, heartbeat=0.05)
    try:
        await asyncio.sleep(0.4)  # quiet for 8 heartbeats: PINGs and PONGs keep it up
        assert not link.closed.done() and not server.links[1].closed.done()
        await link.send(0, 1, b"after the quiet")
        await until(lambda: len(received) == 1)
    finally:
        await link.close()
        await session.close()
    # a peer that authenticates but never reads answers no PING: dead after two heartbeats
    silent, session = await dial(url(server), SECRET, 2, CHANNELS, lambda *frame: None, heartbeat=None)
    try:
        with caplog.at_level(logging.WARNING, logger="kernel.links"):
            await until(lambda: 2 not in server.links, timeout=5)
        assert "process 2 did not answer" in caplog.text
    finally:
        await silent.close()
        await session.close()
        await server.stop()
