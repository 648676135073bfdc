"""Session 36's review of the dialling side of a link before the server has
authenticated: whatever answers at a peer's address (a stranger, another
program, a server without the secret) costs the dialler little, and ends
the dial promptly with an error that says what answered. Real sockets: a
small aiohttp or asyncio server in each test plays the hostile listener.
And two of a stranger's tricks on a server's side: a mac that is not
ASCII, a request path with a new line in it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import struct
import time

import pytest
from _websocket_servers import websocket_server
from aiohttp import web
from kernel.net._links import PATH, AuthenticationFailed, Link, LinkRefused, NotAKernelServer, connect, dial

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

    async with websocket_server(handler) as port:
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            done.set()


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
            await connect(url, SECRET, 1, timeout=8)
        assert time.monotonic() - started < 6  # not the dial's 8 s, nor aiohttp's 10 s


async def test_a_garbage_hello_from_a_server_that_reads_nothing_ends_the_dial_within_its_timeout():
    """The same wait, after a garbage hello: a dial with a timeout of 4 s
    took 10.6 s."""

    async def garbage(ws) -> None:
        await ws.send_str("not json at all")

    async with _websocket_server(garbage) as url:
        started = time.monotonic()
        with pytest.raises(Exception, match="handshake"):
            await connect(url, SECRET, 1, timeout=6)
        assert time.monotonic() - started < 8  # within its timeout (and slack), not aiohttp's 10 s


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
            await connect(url, SECRET, 1, timeout=1)  # (tried again until its timeout: a short one)


def _frame(payload: bytes, opcode: int = 1, fin: bool = True, length: int | None = None) -> bytes:
    """A server's websocket frame (unmasked), its head saying `length` bytes
    (the payload's own by default)."""
    length = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        head = struct.pack(">BB", first, length)
    elif length < 1 << 16:
        head = struct.pack(">BBH", first, 126, length)
    else:
        head = struct.pack(">BBQ", first, 127, length)
    return head + payload


async def _upgrade(reader, writer) -> bytes:
    """Read a websocket upgrade; the answer that accepts it (RFC 6455)."""
    request = await reader.readuntil(b"\r\n\r\n")
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")


async def _read_frame(reader) -> tuple[int, bytes]:
    """A client's (masked) frame: (opcode, payload)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack(">H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack(">Q", await reader.readexactly(8))
    mask = await reader.readexactly(4)
    payload = await reader.readexactly(length)
    return first & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


@contextlib.asynccontextmanager
async def _raw_server(script):
    """A TCP server whose connections run `script(reader, writer)`, then are
    held open until the test ends. Yields its URL."""
    done = asyncio.Event()
    tasks = []

    async def on_connection(reader, writer):
        tasks.append(asyncio.current_task())
        try:
            await script(reader, writer)
            await done.wait()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        done.set()
        server.close()
        await asyncio.gather(*tasks, return_exceptions=True)


HELLO = b'{"process": 0, "nonce": "00"}'
MIB_15 = 15 << 20


@pytest.mark.parametrize("with_the_upgrade", [True, False], ids=["with the upgrade", "after it"])
async def test_a_hello_of_15_mib_is_refused_at_its_head(with_the_upgrade):
    """The dialler read a server's messages up to a data frame's 16 MiB
    from the start: a listener at a peer's address that upgraded and sent
    a hello of 15 MiB made it buffer all of it (115 MB of peak RSS in a
    cluster's relay), or, sending only its first 64 KiB, wait for the rest
    until the handshake's time was up (`did not finish the handshake in
    time`). Now refused at the frame's head, at once, whether it comes in
    one write with the 101 (aiohttp parses that as it sets its parser in
    place) or after."""

    async def big_hello(reader, writer):
        upgrade = await _upgrade(reader, writer)
        head = _frame(b"a" * 65536, length=MIB_15)
        writer.write(upgrade + head if with_the_upgrade else upgrade)
        if not with_the_upgrade:
            await writer.drain()
            writer.write(head)
        await writer.drain()

    async with _raw_server(big_hello) as url:
        started = time.monotonic()
        with pytest.raises(NotAKernelServer) as raised:
            await connect(url, SECRET, 1, timeout=4)
        assert time.monotonic() - started < 1.5
    assert str(raised.value) == (f"{url} answered, but not as a kernel server (it broke the handshake: a "
                                 f"message of {MIB_15} bytes before authenticating, over the 4096 a dialler "
                                 "reads)")


@pytest.mark.parametrize("fragments", [1, 3])
async def test_an_answer_over_4_kib_is_refused_at_its_head_whole_or_in_fragments(fragments):
    """The answer to the dialler's hello, the server's second message: 4 KiB
    at most too, counted over its fragments."""

    async def big_answer(reader, writer):
        writer.write(await _upgrade(reader, writer) + _frame(HELLO))
        await _read_frame(reader)  # the dialler's hello
        piece = b"x" * 2000
        writer.write(b"".join(_frame(piece, opcode=1 if i == 0 else 0, fin=i == fragments - 1)
                              for i in range(fragments - 1)) + _frame(piece, opcode=0 if fragments > 1 else 1,
                                                                      length=MIB_15))
        await writer.drain()

    async with _raw_server(big_answer) as url:
        with pytest.raises(NotAKernelServer, match=rf"a message of {MIB_15 + 2000 * (fragments - 1)} bytes "
                                                   "before authenticating"):
            await connect(url, SECRET, 1, timeout=4)


async def test_pings_past_64_kib_before_the_hello_are_refused():
    """Small frames without end (pings, each answered) before any hello:
    64 KiB in all before the server has authenticated, as a server allows
    a stranger."""

    async def pings(reader, writer):
        writer.write(await _upgrade(reader, writer))
        for _ in range(1000):
            writer.write(_frame(b"p" * 100, opcode=9))
        await writer.drain()

    async with _raw_server(pings) as url:
        with pytest.raises(NotAKernelServer, match="it sent more than 64 KiB before authenticating"):
            await connect(url, SECRET, 1, timeout=4)


@pytest.mark.parametrize("after", [1 << 20, 100], ids=["a 1 MiB frame", "a small frame"])
async def test_a_peers_first_frame_in_the_same_write_as_its_answer_arrives_whole(after):
    """A kernel server sends its first data frames as soon as it has
    answered: they may come in the dialler's read of the answer, before the
    dialler has checked it. Held until then, they arrive whole, in order."""
    data = bytes(range(256)) * (after // 256) if after >= 256 else b"d" * after

    async def peer(reader, writer):
        writer.write(await _upgrade(reader, writer) + _frame(HELLO))
        _, hello = await _read_frame(reader)
        nonce = json.loads(hello)["nonce"]
        mac = hmac.new(SECRET.encode(), b"server|" + nonce.encode() + b"|0", hashlib.sha256).hexdigest()
        answer = json.dumps({"mac": mac, "meta": None}).encode()
        writer.write(_frame(answer) + _frame(struct.pack("<IB", 0, 1) + data, opcode=2)
                     + _frame(struct.pack("<IB", 0, 1) + b"second", opcode=2))
        await writer.drain()
        while (await _read_frame(reader))[0] != 8:  # until the dialler's close, answered
            pass
        writer.write(_frame(b"", opcode=8))

    async with _raw_server(peer) as url:
        link, session = await dial(url, SECRET, 1, {0}, lambda *frame: None, timeout=4)
        try:
            frames = []
            async for channel, kind, body in link:
                frames.append((channel, kind, bytes(body)))
                if len(frames) == 2:
                    break
        finally:
            await link.close()
            await session.close()
    assert frames == [(0, 1, data), (0, 1, b"second")]
    assert isinstance(link, Link)


@pytest.mark.parametrize("then", ["holds the connection", "closes it"])
def test_a_program_that_speaks_first_at_a_peers_address_is_said_so_at_once_on_uvloop(then):
    """An SSH server at a peer's address sends its banner as it accepts. On
    uvloop (a kernel's loop: a topic's subscriber, a service's client) the
    banner came before aiohttp had written the upgrade: its parser failed
    and closed the connection, the write said `Cannot write to closing
    transport`, and the dial, taking that for a refusal, retried until its
    timeout: `could not reach ... within 3 s: Cannot write to closing
    transport`. (On asyncio's loop aiohttp writes first and says `400 Bad
    status line`.)"""
    import uvloop

    async def scenario():
        done = asyncio.Event()

        async def sshd(reader, writer):
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
            await writer.drain()
            if then == "holds the connection":
                await done.wait()
            writer.close()

        server = await asyncio.start_server(sshd, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        started = time.monotonic()
        try:
            with pytest.raises(NotAKernelServer) as raised:
                await connect(url, SECRET, 1, timeout=12)
        finally:
            done.set()
            server.close()
        return url, str(raised.value), time.monotonic() - started

    url, said, took = uvloop.run(scenario())
    assert took < 6  # at once, not retried until the dial's 12 s
    assert said in (f"{url} answered, but not as a kernel server (it spoke first, before any request: "
                    "b'SSH-2.0-OpenSSH_9.6\\r\\n')",
                    # (aiohttp wrote first after all: its own words)
                    f"{url} answered, but not as a kernel server (400 Bad status line: Expected HTTP/, RTSP/ "
                    "or ICE/: b'SSH-2.0-OpenSSH_9.6' ^)"), said


async def test_a_strangers_hello_with_a_mac_that_is_not_ascii_is_a_logged_refusal(caplog):
    """README, Bad input: a stranger's bad handshake closes its connection
    and is logged as a refusal, rate-limited. A hello whose mac holds a
    character that is not ASCII made hmac.compare_digest raise TypeError
    past the server's handling: aiohttp logged an ERROR with a traceback
    for each such connection, none counted, and dropped it (1006) where a
    wrong mac is refused (4001, `authentication failed`). The dialler
    took a server's such answer for garbage, not for a wrong mac."""
    import logging

    import aiohttp
    from kernel.net._links import LinkServer

    server = LinkServer("127.0.0.1", 0, SECRET, 0, {0}, lambda peer: (lambda *frame: None))
    await server.start()
    try:
        with caplog.at_level(logging.WARNING):
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(f"http://127.0.0.1:{server.port}{PATH}")
                await ws.receive(timeout=5)
                await ws.send_str('{"process": 1, "nonce": "00", "mac": "\\u00e9"}')
                answer = await ws.receive(timeout=5)
                await ws.close()
        assert (answer.type.name, answer.data) == ("CLOSE", 4001)
        assert [r.levelname for r in caplog.records if r.levelno >= logging.ERROR] == []
        refusal = "refused a link from 127.0.0.1: authentication failed with process 1 at 127.0.0.1"
        assert refusal in caplog.text
    finally:
        await server.stop()

    async def non_ascii_answer(ws) -> None:
        await ws.send_str('{"process": 0, "nonce": "00"}')
        await ws.receive()
        await ws.send_str('{"mac": "\\u00e9"}')
        await _read_on(ws)

    async with _websocket_server(non_ascii_answer) as url:
        with pytest.raises(AuthenticationFailed):
            await connect(url, SECRET, 1, timeout=4)


async def test_a_strangers_words_reach_the_diallers_error_without_new_lines_or_terminal_escapes():
    """Before the server has proved it holds the secret, its hello's process
    (any JSON: a string) and its close frame's reason went into the
    dialler's error as they were: a listener at a peer's address without
    the secret printed `error: authentication failed with process 0 at
    http://x` and a second line of its own, in red, under `kernel.run`.
    A hello's process must be an int (as the server requires of the
    dialler's); a reason is said with what is not printable escaped."""
    from kernel.net._links import UNEXPECTED, LinkError

    forged = "0 at http://x\nerror: \x1b[31mrerun with --secret hunter2\x1b[0m"

    async def forged_process(ws) -> None:
        await ws.send_str(json.dumps({"process": forged, "nonce": "00"}))
        await ws.receive()
        await ws.send_str('{"mac": "wrong"}')
        await _read_on(ws)

    async def forged_reason(ws) -> None:
        await ws.send_str('{"process": 0, "nonce": "00"}')
        await ws.receive()
        await ws.close(code=UNEXPECTED, message=b"x\nerror: \x1b[31mforged")

    said = []
    for behaviour in (forged_process, forged_reason):
        async with _websocket_server(behaviour) as url:
            with pytest.raises(LinkError) as raised:
                await connect(url, SECRET, 1, timeout=4)
            said.append(str(raised.value))
    assert isinstance(raised.value, LinkError)
    assert said[0].endswith("(it broke the handshake: TypeError: a hello whose process is a str, its nonce "
                            "a str)"), said[0]
    assert "x\\nerror: \\x1b[31mforged" in said[1], said[1]
    assert not any(c in text for c in "\n\x1b" for text in said), said


async def test_a_strangers_request_path_reaches_the_servers_log_without_new_lines_or_escapes(caplog):
    """The refusal of plain HTTP logged the request's path decoded: a
    stranger's `GET /%0Aerror:%20%1B[31mforged` wrote a line of its own,
    in red, into the server's log."""
    import logging

    from kernel.net._links import LinkServer

    server = LinkServer("127.0.0.1", 0, SECRET, 0, {0}, lambda peer: (lambda *frame: None))
    await server.start()
    try:
        with caplog.at_level(logging.WARNING, logger="kernel.links"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /%0Aerror:%20%1B[31mforged HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await reader.read()  # (to the server's close)
            writer.close()
    finally:
        await server.stop()
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert [r.getMessage() for r in caplog.records] == [
        "refused a link from 127.0.0.1: plain HTTP (GET /\\nerror: \\x1b[31mforged), not a link"]
