"""Links between processes on different machines: one aiohttp websocket per
pair of processes, every channel multiplexed on it.

Start-up (timely's rule): process i dials the lower-numbered processes and
accepts the higher ones. A dialer retries until its start-up timeout, so
peers may start in any order.

Authentication, before any data flows (HMAC-SHA256 challenge-response over a
shared secret that never crosses the wire nor reaches a log):

1. the server sends `{"process": its id, "nonce": 32 random bytes (hex)}`;
2. the client answers `{"process": its id, "nonce": ..., "mac":
   HMAC(secret, "client" | server nonce | client id)}`;
3. the server checks the mac (constant-time) and answers `{"mac":
   HMAC(secret, "server" | client nonce | server id)}`, or closes with code
   4001 "authentication failed"; the client checks the server's mac the same
   way. Either side that fails raises `AuthenticationFailed`. A server that
   does not take an authenticated client (its process already linked, or
   not one that dials it: `_unexpected`) closes with 4003 and why, and the
   client raises a LinkError saying so.

Frames: binary websocket messages, `<IB` (channel, kind) then the body (the
codec's frames: data, watermark, end, idle, epoch). Flow control is
credit-based per channel, in bytes: a sender may have `window` bytes of a
channel unacknowledged (a frame larger than the window goes alone); the
receiver grants credit back (a CREDIT frame) as the consumer reports bytes
handled (`consumed`), half a window at a time; a sender that lacks the
credit for a frame asks (CREDIT_ASK), and the receiver then grants what it
has handled at once (or at its next `consumed`), so no frame waits for
bytes that were handled but not yet granted. A slow consumer therefore
stops its sender, and a link holds at most a window per channel in flight.

Consumers either pull (`async for channel, kind, body in link`: no task
between the socket and the caller, what the round-trip benchmark uses) or
have `run()` push every frame to `on_frame`.

Liveness: each end checks every `heartbeat` seconds whether anything came
from the peer since the last check (bytes, not whole messages: a large
frame on a slow network takes longer than that); after one silent period
it sends a PING frame (answered by a PONG), after two the link is declared
dead (`error` set, `closed` resolved). An end that heard part of a message
and no whole one sends a PONG unasked: the peer's PING waits behind that
message, and the peer must hear it is heard. A cut cable (no FIN, no RST)
thus ends a link within two heartbeats instead of TCP's minutes. (aiohttp's
own heartbeat reschedules a timer on every message received: 2-3 us of
each round trip in benches/links.py; this costs one attribute store per
message and one call per read.)

Shape: after authentication each side sends `meta` (for a cluster: the
flow's fingerprint and the cores per process); a peer whose meta differs is
authenticated but incompatible, and both sides fail with `LinkMismatch`.

Bad input closes that connection and is logged; the server goes on:
garbage or plain HTTP requests (aiohttp answers them with an error),
frames larger than `max_frame`, text frames after the handshake, frames for
a channel the link does not carry.

Strangers: until a connection has authenticated it may cost the server
little (`LinkServer`): messages of HANDSHAKE_MAX_MESSAGE bytes (a data
frame's limit only after authentication), PENDING_MAX_BYTES in all, no
compression, small HTTP header limits, MAX_PENDING such connections at once
(an address holding more of them than a newcomer's gives up its oldest) and
HANDSHAKE_TIMEOUT seconds from connecting to authenticated (with TLS, as
long again for the TLS handshake, which comes before the server sees the
connection). A dialler is guarded alike until the server has authenticated
(`_UntilServerAuthenticated`): the server's hello and answer
HANDSHAKE_MAX_MESSAGE bytes each, PENDING_MAX_BYTES in all, and
HANDSHAKE_TIMEOUT seconds from the upgrade to the server's hello (then it
tries again, within its own timeout; the answer to its own hello has the
rest of that timeout: the server takes the link as it answers).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http
import ipaddress
import logging
import os
import random
import socket
import ssl
import struct
from collections import Counter, deque
from collections.abc import Callable, Coroutine
from urllib.parse import urlsplit

import aiohttp
import msgspec
from aiohttp import web
from aiohttp.http import WebSocketError, WebSocketReader, WSCloseCode
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import RequestHandler, _ErrInfo

from ._causes import causes, dial_failure_said, refused_by_server, untrusted_certificate
from ._dial_progress import DialProgress
from ._environment import FROM_ENVIRONMENT, HEARTBEAT, heartbeat_or_environment

log = logging.getLogger("kernel.links")

PATH = "/kernel-link"
FRAME = struct.Struct("<IB")
KIND_CREDIT = 0x40  # body: u64 bytes granted
KIND_PING = 0x41  # liveness, on any channel id; answered by KIND_PONG
KIND_PONG = 0x42
_HANDSHAKE_MIN = 2.0  # seconds a handshake gets even when the dial timeout is nearly spent
KIND_CREDIT_ASK = 0x43  # a sender waits for credit: grant what was handled now
_CREDIT = struct.Struct("<Q")
AUTH_FAILED = 4001
DEFAULT_WINDOW = 4 << 20  # bytes in flight per channel
DEFAULT_MAX_FRAME = 16 << 20


# seconds; a peer silent for two of them is dead. A link's default is
# KERNEL_HEARTBEAT where set when it starts (FROM_ENVIRONMENT), else this.
DEFAULT_HEARTBEAT = HEARTBEAT
MISMATCH = 4002
# an authenticated peer this server does not take (a process already linked, or
# one that should not dial it); the close frame's reason says which
UNEXPECTED = 4003
# Before a connection has authenticated (see LinkServer):
HANDSHAKE_MAX_MESSAGE = 4096  # bytes in one message: the hello with its meta is ~300
# Seconds from connecting to authenticated. Not the start-up timeout: that
# covers peers starting at different times (the dialer retries), this one
# connection, which on a cluster's network takes a few round trips (TCP, TLS,
# the upgrade, two messages: milliseconds, a second on a slow WAN or a loaded
# machine). A few seconds, so that silent connections are closed soon.
HANDSHAKE_TIMEOUT = 5.0
MAX_PENDING = 32  # unauthenticated connections at once (at least twice the expected peers)
# what a connection may send before it authenticates: its upgrade (< 1 KiB
# with aiohttp's headers, _HTTP_MAX_LINE x _HTTP_MAX_HEADERS at most) and
# its hello (HANDSHAKE_MAX_MESSAGE), with room to spare
PENDING_MAX_BYTES = 64 * 1024
_HTTP_MAX_LINE = 1024  # HTTP request and header lines: an upgrade's are < 100 bytes
_HTTP_MAX_HEADERS = 32  # aiohttp's client sends 8
# seconds a connection past its websocket upgrade may take to answer the
# challenge before it may be closed to make room (`_Guard._make_room_for`):
# a peer answers in milliseconds, a stranger holding the slot never does
_EVICTABLE_AFTER = 1.0
# seconds past its time limit a TLS handshake keeps its pending slot, at
# most (start_tls's own timer ends it at the limit: ours is a backstop)
_TLS_BACKSTOP = 1.0
_OVERFLOW_LOG_EVERY = 5.0  # seconds between reports of refusals over MAX_PENDING
# Seconds a dial waits before trying again a server that refused it (closed
# or reset the connection before authenticating: `LinkRefused`), doubling
# from the first to the most, jittered (`backoff`). A refused dial was tried
# again as soon as one that found nobody listening (10 ms, doubling to
# 0.25 s): 13 connections in 2 s, each a refusal in the server's log and a
# TLS handshake on both sides, for a server over its limit of pending
# connections or one refusing our certificate.
REFUSED_FIRST, REFUSED_MOST = 0.1, 2.0
REFUSALS_LOGGED = 10  # refusals logged one by one in each _OVERFLOW_LOG_EVERY seconds; the rest counted
_CLOSE_WAIT = 1.0  # seconds a closing server end waits for the peer's close frame
# seconds a dial that found its connection closed before its request went out
# waits, on a new one, for the server to speak first (`_speaks_first`): a
# program that does (an SSH server's banner) does so as it accepts
_PROBE_WAIT = 0.5
_BINARY = aiohttp.WSMsgType.BINARY
_ERROR = aiohttp.WSMsgType.ERROR
_CLOSE = aiohttp.WSMsgType.CLOSE
_ENDED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)
_HEAD = FRAME.size
_pack, _unpack = FRAME.pack, FRAME.unpack_from


class LinkError(Exception):
    """A link that could not be made or broke. `kernel`: the index of the
    peer's kernel it names, where that is one kernel (a peer lost, or that
    never came, of one core: `--log-format json`'s `kernel` field)."""

    kernel: int | None = None  # (set on the instance: pickled with it, as its __dict__)


class AuthenticationFailed(LinkError):
    def __init__(self, peer: str) -> None:
        super().__init__(f"authentication failed with {peer}: wrong or missing secret")
        self.peer = peer

    def __reduce__(self):  # crosses from the relay process to its launcher
        return type(self), (self.peer,)


class LinkMismatch(LinkError):
    """An authenticated peer runs something else (another flow, other cores)."""


class TwinProcess(LinkError):
    """Two processes claim one process id (a cluster's configuration
    error): the second to connect is refused, and the run of the process
    they both dialled ends with this, naming the id and both addresses."""


# the end of a refusal of a peer's second connection, its link to us up: its question at its
# start-up timeout (`LinkServer._its_own_link`), not logged, and no twin
ITS_OWN_LINK = "its own link"


class _Unexpected(LinkError):
    """An authenticated peer the server does not take (`_unexpected`)."""


class NotAKernelServer(LinkError):
    """The address answered HTTP, but not with a websocket: another program
    listens there."""


class TLSFailed(LinkError):
    """A server whose TLS does not go with ours: its certificate does not
    verify, or it answered without TLS. No retry mends it."""


class LinkRefused(LinkError):
    """The server was there and closed or reset the connection before it
    authenticated us (`_causes.refused_by_server`; or it broke or never
    finished the handshake): over its limit of pending connections,
    refusing our TLS certificate, its time limit. Not a wrong secret, which
    is the server's own word (`AuthenticationFailed`)."""


def backoff(first: float, most: float):
    """Pauses between tries: doubling from `first` to `most` seconds, each
    drawn from the upper half of its span, so that dialers refused together
    (by one flood, after one restart) come back apart, and never sooner
    than half the pause."""
    pause = first
    while True:
        yield random.uniform(pause / 2, pause)
        pause = min(pause * 2, most)


def _seconds(timeout: float) -> str:
    """`timeout` in an error's words: to the hundredth ("within 2 s", where
    a command's time left, 1.99622 s, was said to the microsecond)."""
    return f"{round(timeout, 2):g}"


def _status_phrase(status) -> str:
    """HTTP's name of `status` ("Not Found"), or "" for one it has none."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def _check_meta(mine, theirs, peer: str) -> None:
    if mine == theirs:
        return
    if isinstance(mine, dict) and isinstance(theirs, dict):
        keys = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        differ = ", ".join(f"{k}={theirs.get(k)!r} there, {mine.get(k)!r} here" for k in keys)
    else:
        differ = f"{theirs!r} there, {mine!r} here"
    raise LinkMismatch(f"{peer} is incompatible ({differ}): every process of a cluster must run "
                       "the same flow with the same cores and peers, each with a state_dir or none")


def _on_every_read(ws, callback: Callable[[], None]) -> None:
    """Call `callback` on every read from `ws`'s connection, through the hook
    aiohttp's own heartbeat uses (after any callback there): the heartbeat
    hears a peer while one of its messages is still coming. It heard only
    whole messages, so a frame taking longer than two heartbeats to arrive
    (4 MiB on a link under 6.4 Mbit/s, with the default 2.5 s) ended a
    link that was busy, not silent: `did not answer for 5 s`."""
    request = getattr(ws, "_req", None)  # a server's web.WebSocketResponse
    protocol = request.protocol if request is not None else getattr(getattr(ws, "_conn", None), "protocol",
                                                                     None)
    if protocol is None or not hasattr(protocol, "_data_received_cb"):
        return  # (then whole messages only, as before)
    before = protocol._data_received_cb
    if before is None:
        protocol._data_received_cb = callback
    else:
        def both() -> None:
            before()
            callback()

        protocol._data_received_cb = both


def _mac(secret: bytes, role: bytes, nonce: str, process: int) -> str:
    message = role + b"|" + nonce.encode() + b"|" + str(process).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _same_mac(given, expected: str) -> bool:
    """Whether the mac a peer sent (any JSON value) is `expected`, in
    constant time. Compared as bytes: hmac.compare_digest refuses str with
    non-ASCII characters (TypeError), which a stranger's hello with a mac
    of "\u00e9" raised past the server's handling of bad handshakes: aiohttp
    logged an ERROR with its traceback for each such connection, neither
    counted nor rate-limited."""
    return hmac.compare_digest(str(given).encode(errors="replace"), expected.encode())


def _secret(secret: bytes | str) -> bytes:
    if not secret:
        raise ValueError("a link needs a shared secret (KERNEL_SECRET or --secret-file)")
    return secret.encode() if isinstance(secret, str) else bytes(secret)


class Link:
    """One authenticated websocket to process `peer`.

    `on_frame(channel, kind, body)` gets every frame of the channels in
    `channels`; the consumer calls `consumed(channel, Link.size(body))` once
    it has handled a frame, which grants the sender that much credit again.
    """

    def __init__(self, ws, peer: int, channels, on_frame: Callable, window: int,
                 heartbeat: float | None = FROM_ENVIRONMENT) -> None:
        heartbeat = heartbeat_or_environment(heartbeat)
        self.ws = ws
        self.peer = peer
        self.channels = frozenset(channels)
        self.on_frame = on_frame
        self.window = window
        self._credit = dict.fromkeys(self.channels, window)
        self._waiters: dict[int, asyncio.Future] = {}
        self._handled = dict.fromkeys(self.channels, 0)
        self._half = window // 2  # credit is granted back half a window at a time
        self._asked: set[int] = set()  # channels whose sender waits for credit
        self._grants: set = set()  # credit frames on their way out
        self.error: LinkError | None = None  # why the link ended, when it was not a clean close
        self.closed = asyncio.get_running_loop().create_future()
        self._heard = True  # something came from the peer in this heartbeat period
        self._reading = False  # bytes came from the peer in this period (whole messages or not)
        self._pinged = False
        self.pongs = 0  # PONGs: answers to our PINGs, or the peer still hearing a long message of ours
        self.sent_bytes = 0  # frames handed to `send` (Link.size each): streamkernel_link_sent_bytes_total
        # the peer said it is done with this link (the relay's BYE or DONE): how
        # the connection then ends is no error (over TLS the peer's process may
        # exit before its close frame is out: code 1006)
        self.goodbye = False
        self.close_reason = ""  # the peer's, where it closed the link giving one (the relay says it)
        self._heartbeat = heartbeat
        if heartbeat:
            _on_every_read(ws, self._hear)
            asyncio.get_running_loop().call_later(heartbeat, self._check_alive)

    def _hear(self) -> None:
        self._reading = True

    def _check_alive(self) -> None:
        if self.closed.done():
            return
        loop = asyncio.get_running_loop()
        if self._heard:
            self._heard = self._reading = self._pinged = False
        elif self._reading:
            # A message of the peer's is still coming (bytes, no whole message
            # this period): alive. Our PING would wait behind it, unanswered,
            # and the peer, hearing nothing from us, drop the link: say we hear it.
            self._reading = self._pinged = False
            self._send_soon(KIND_PONG)
        elif not self._pinged:
            self._pinged = True
            self._send_soon(KIND_PING)
        else:
            self.error = LinkError(f"process {self.peer} did not answer for "
                                   f"{2 * self._heartbeat:g} s (peer dead or network cut)")
            log.warning("%s; dropping the link", self.error)
            self._ended()
            task = loop.create_task(self._abort())
            self._grants.add(task)
            task.add_done_callback(self._grants.discard)
            return
        loop.call_later(self._heartbeat, self._check_alive)

    def _send_soon(self, kind: int) -> None:
        task = asyncio.get_running_loop().create_task(self._send_control(kind))
        self._grants.add(task)
        task.add_done_callback(self._grants.discard)

    async def _send_control(self, kind: int, channel: int = 0) -> None:
        try:
            await self.ws.send_bytes(FRAME.pack(channel, kind))
        except (ConnectionError, RuntimeError):
            pass  # closing: the reader reports it

    async def _abort(self) -> None:
        try:
            # (the peer, frozen and back, ends its run with this: it was the silent one)
            message = f"no heartbeat: nothing heard from this end for {2 * self._heartbeat:g} s"
            await asyncio.wait_for(self.ws.close(code=1001, message=message.encode()), 1.0)
        except Exception:
            pass

    # -- sending ------------------------------------------------------------------

    @staticmethod
    def size(body) -> int:
        """What a frame with this body counts against the window."""
        return _HEAD + len(body)

    def send(self, channel: int, kind: int, body: bytes = b"") -> Coroutine[None, None, None]:
        """Send one frame, waiting while the channel lacks the credit for it
        (a frame larger than the whole window waits for all of it); await
        what it returns. (Not itself a coroutine function: when the channel
        has the credit, the common case, it takes it now and returns the
        websocket's own `send_bytes` coroutine, one coroutine less on every
        frame's path, and one never awaited keeps the credit it took;
        otherwise a coroutine that waits for the credit.)"""
        size = _HEAD + len(body)
        self.sent_bytes += size
        credit = self._credit
        if credit[channel] >= size:
            credit[channel] -= size
            return self.ws.send_bytes(_pack(channel, kind) + body)
        return self._send_when_credited(channel, kind, body, size)

    async def _send_when_credited(self, channel: int, kind: int, body, size: int) -> None:
        credit = self._credit
        while credit[channel] < min(size, self.window):
            waiter = self._waiters.get(channel)
            if waiter is None or waiter.done():
                waiter = self._waiters[channel] = asyncio.get_running_loop().create_future()
            # Credit comes back half a window at a time, so up to half a
            # window of handled bytes can stay ungranted: ask for them (else
            # a frame larger than what is left would wait forever).
            await self._send_control(KIND_CREDIT_ASK, channel)
            await asyncio.wait({waiter, self.closed}, return_when=asyncio.FIRST_COMPLETED)
            if self.closed.done():
                raise LinkError(f"link to process {self.peer} closed")
        credit[channel] -= size
        await self.ws.send_bytes(_pack(channel, kind) + body)

    def credit(self, channel: int) -> int:
        return self._credit[channel]

    # -- receiving ---------------------------------------------------------------------

    def consumed(self, channel: int, nbytes: int) -> None:
        """The consumer handled `nbytes` (`Link.size(body)`) of `channel`:
        grant them back (one CREDIT frame per half window, so credit
        traffic stays small)."""
        handled = self._handled[channel] + nbytes
        if handled >= self._half or channel in self._asked:
            self._asked.discard(channel)
            self._grant_now(channel, handled)
        else:
            self._handled[channel] = handled

    def _grant_now(self, channel: int, nbytes: int) -> None:
        self._handled[channel] = 0
        task = asyncio.ensure_future(self._grant(channel, nbytes))
        self._grants.add(task)
        task.add_done_callback(self._grants.discard)

    async def _grant(self, channel: int, nbytes: int) -> None:
        try:
            await self.ws.send_bytes(FRAME.pack(channel, KIND_CREDIT) + _CREDIT.pack(nbytes))
        except (ConnectionError, RuntimeError):
            pass  # closing: the reader reports it

    def __aiter__(self):
        return self

    async def __anext__(self):
        """The next data frame, `(channel, kind, body)`; credit frames are
        handled on the way; bad input closes the connection. (A coroutine,
        not an async generator: it is on every frame's path, and the round
        trip in benches/links.py is shorter this way. A data frame of a
        known channel is returned inline; everything else goes through
        `_other`.)"""
        ws = self.ws
        while True:
            message = await ws.receive()
            self._heard = True
            data = message.data
            if message.type is _BINARY and len(data) >= _HEAD:
                channel, kind = _unpack(data)
                if kind < KIND_CREDIT and channel in self.channels:
                    return channel, kind, memoryview(data)[_HEAD:]
            frame = await self._other(message)
            if frame is not None:
                return frame

    async def _other(self, message):
        """A message that is not a plain data frame of a known channel: the
        end of the connection (StopAsyncIteration, or LinkError when it did
        not end cleanly), a malformed frame or an unknown channel (LinkError,
        and the connection is closed), PING/PONG, CREDIT (None: read on), or
        a data frame of a kind above the control kinds (returned)."""
        ws = self.ws
        try:
            data = message.data
            if message.type is not _BINARY or len(data) < _HEAD:
                if message.type in _ENDED:
                    if message.type is _CLOSE and message.extra:
                        self.close_reason = str(message.extra)[:123]
                    if ws.close_code not in (None, 1000) and not self.goodbye:
                        raise LinkError(f"link to process {self.peer} closed: code {ws.close_code}")
                    self._ended()
                    raise StopAsyncIteration
                if message.type is _ERROR:  # the connection broke: not the peer's doing
                    self.error = LinkError(f"link to process {self.peer} broke: {ws.exception() or data}")
                    log.warning("%s", self.error)
                    self._ended()
                    raise self.error
                raise LinkError(f"process {self.peer} sent a malformed frame ({message.type.name})")
            channel, kind = _unpack(data)
            if kind == KIND_PING:
                await self._send_control(KIND_PONG)
                return None
            if kind == KIND_PONG:
                self.pongs += 1
                return None
            if channel not in self.channels:
                raise LinkError(f"process {self.peer} sent a frame for unknown channel {channel}")
            if kind == KIND_CREDIT_ASK:  # grant what was handled, or the next handled
                if self._handled[channel]:
                    self._grant_now(channel, self._handled[channel])
                else:
                    self._asked.add(channel)
                return None
            if kind != KIND_CREDIT:
                return channel, kind, memoryview(data)[_HEAD:]
            if len(data) != _HEAD + _CREDIT.size:  # (a struct.error past here, and a link never closed)
                raise LinkError(f"process {self.peer} sent a malformed frame (CREDIT of {len(data)} bytes)")
            self._credit[channel] += _CREDIT.unpack_from(data, _HEAD)[0]
            waiter = self._waiters.pop(channel, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            return None
        except LinkError as exc:
            self.error = exc
            log.warning("%s; closing that connection", exc)
            await ws.close(code=1003, message=str(exc)[:100].encode())
            self._ended()
            raise

    def _ended(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    async def run(self) -> None:
        """Read frames until the connection closes, handing each to
        `on_frame`; bad input closes it. An `on_frame` that returns an
        awaitable (an echo's `send`, say) is awaited before the next frame
        is read, with no task in between. (`__anext__`'s loop inlined: one
        coroutine less on every frame's path.)"""
        ws = self.ws
        on_frame = self.on_frame
        while True:
            message = await ws.receive()
            self._heard = True
            data = message.data
            if message.type is _BINARY and len(data) >= _HEAD:
                channel, kind = _unpack(data)
                if kind < KIND_CREDIT and channel in self.channels:
                    pending = on_frame(channel, kind, memoryview(data)[_HEAD:])
                    if pending is not None:
                        await pending
                    continue
            try:
                frame = await self._other(message)
            except StopAsyncIteration:
                return
            if frame is not None:
                pending = on_frame(*frame)
                if pending is not None:
                    await pending

    async def close(self) -> None:
        self._ended()
        await self.ws.close()


# -- the two ends of a connection -------------------------------------------------------


class _StopAtFirstError:
    """aiohttp's HTTP parser for one connection, stopping at its first error.
    aiohttp goes on reading and parsing after an error, queueing an error per
    read until its answer closes the connection, and each queued error's
    traceback holds that read's bytes in a reference cycle (the parse
    frame): a stranger's garbage kept megabytes a connection until a full
    garbage collection. Here the first error stops the reading (the 400
    and the close follow as before), comes without a traceback (nothing
    holds the bytes), and anything read after it is dropped unparsed. Only
    the HTTP requests before a websocket upgrade pass here, never a frame."""

    __slots__ = ("_failed", "_handler", "_parser")

    def __init__(self, parser, handler: RequestHandler) -> None:
        self._parser = parser
        self._handler = handler
        self._failed = False

    def feed_data(self, data):
        if self._failed:
            return (), False, b""
        try:
            return self._parser.feed_data(data)
        except HttpProcessingError as exc:
            self._failed = True
            handler = self._handler
            handler._reading_paused = True  # (aiohttp resumes a transport it paused itself, not this)
            handler._pause_transport_reading()
            exc.__traceback__ = None
            exc.message = exc.message[:200]  # (the C parser's message quotes every byte it was given)
            # what aiohttp's data_received makes of the error (answered by handle_error below)
            return [(_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD)], False, b""

    def __getattr__(self, name: str):
        return getattr(self._parser, name)  # the rest as the parser has it (message_consumed, ...)


class _Handler(RequestHandler):
    """aiohttp's HTTP connection, saying in one line of ours what was wrong
    with HTTP it cannot parse (garbage on the port, headers over the
    limits), where aiohttp logs garbage at debug level only and the rest as
    an ERROR with a traceback; the answer is the same 400, and the
    connection is closed. It stops reading at the first such error
    (`_StopAtFirstError`)."""

    __slots__ = ("_first",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._parser = _StopAtFirstError(self._parser, self)
        self._first = b""  # the connection's first 6 bytes (a TLS ClientHello's, by mistake?)

    def data_received(self, data: bytes) -> None:
        # Counted before aiohttp sees them: bytes sent with or right after
        # an upgrade waited in aiohttp's buffers (up to a 256 KiB read each)
        # before the handshake's size limit applied, so 30 strangers grew
        # the server by 8 MB (a review); now ~PENDING_MAX_BYTES each.
        if self._manager.received(self, len(data)):
            if len(self._first) < 6:
                self._first += data[:6 - len(self._first)]
            super().data_received(data)

    def handle_error(self, request, status=500, exc=None, message=None):
        if status >= 500:  # ours, not the peer's: aiohttp's report
            return super().handle_error(request, status, exc, message)
        first = self._first  # a TLS record (0x16, 3.x) holding a ClientHello (1): a peer with TLS on
        if first[:2] == b"\x16\x03" and first[2:3] <= b"\x04" and first[5:6] == b"\x01":
            why = "a TLS handshake, on a port without TLS: TLS is on there (--tls-cert) and off here?"
            self._manager.failures.append(LinkError(f"{_remote(request)} sent {why}"))
            self._manager.refusals.warn("refused %s from %s: %s", self._manager.noun, _remote(request), why)
            what = "a TLS handshake"  # (answered as below: the peer's TLS says WRONG_VERSION_NUMBER)
        else:
            what = type(exc).__name__ if exc is not None else str(status)
            self._manager.refusals.warn("refused %s from %s: malformed HTTP (%s)", self._manager.noun,
                                        _remote(request), what)
        if request.writer.output_size > 0:  # (as aiohttp: too late for an answer)
            raise ConnectionError("malformed HTTP after the answer began")
        response = web.Response(status=status, text=f"malformed HTTP ({what})\n")
        response.force_close()
        return response


class _RefusalLog:
    """A server's refusals, logged: the first REFUSALS_LOGGED of each period
    of _OVERFLOW_LOG_EVERY seconds one by one, the rest counted and said in
    one line when the period ends (or the server stops). A stranger
    connecting in a loop must not fill the disk with log lines."""

    def __init__(self) -> None:
        self._logged = 0  # in this period
        self._unlogged = 0
        self._latest = ""
        self._timer: asyncio.TimerHandle | None = None

    def warn(self, message: str, *args) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_OVERFLOW_LOG_EVERY, self._period_ends)
        if self._logged < REFUSALS_LOGGED:
            self._logged += 1
            log.warning(message, *args)
        else:
            self._unlogged += 1
            self._latest = message % args

    def _period_ends(self) -> None:
        self._timer = None
        if self._unlogged:
            log.warning("%d more refusals in %g s, not logged one by one (the latest: %s)", self._unlogged,
                        _OVERFLOW_LOG_EVERY, self._latest)
        self._logged = self._unlogged = 0

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._period_ends()


class _Guard(web.Server):
    """aiohttp's low-level server, guarding what a connection may cost before
    it authenticates: at most `max_pending` such connections at once (the
    next is closed as it arrives: no slot, no buffer), and each must finish
    the handshake within `handshake_timeout` seconds of connecting, or it is
    closed. The link handler reports a connection authenticated (it leaves
    the count) and takes over the clock once a websocket is up."""

    def __init__(self, handler, *, max_pending: int, handshake_timeout: float, noun: str = "a link",
                 **kwargs) -> None:
        super().__init__(handler, **kwargs)
        self.noun = noun  # what the log says was refused: "a link", "a system connection"
        self.max_pending = max_pending
        self.handshake_timeout = handshake_timeout
        # -> [deadline, timer or None, address, transport, bytes received]
        self._pending: dict[RequestHandler, list] = {}
        self._overflow = 0  # refusals over max_pending not reported yet
        self._overflow_from = ""  # the latest one's address
        self._overflow_timer: asyncio.TimerHandle | None = None  # the next report, if any
        self.refusals = _RefusalLog()
        # refusals that say what may keep a peer out (its server's `failures`)
        self.failures: deque[Exception] = deque(maxlen=16)

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def connection_made(self, handler, transport) -> None:
        super().connection_made(handler, transport)
        self._admit(handler, transport, self._expire)

    def tls_started(self, front, transport) -> bool:
        """A connection to a TLS port, before its TLS handshake: it takes a
        pending slot like any other (its SSL object and buffers cost as
        much as a connection waiting to authenticate), until `tls_ended`.
        False: over the limit, closed (and counted as a refusal)."""
        return self._admit(front, transport, self._expire_tls)

    def tls_ended(self, front) -> None:
        """The TLS handshake failed, or is done (the connection is about to
        be the guard's own, counted again then as pending): its slot is free."""
        self.authenticated(front)

    def _admit(self, key, transport, expire) -> bool:
        address = _address(transport)
        if len(self._pending) >= self.max_pending and not self._make_room_for(address):
            # (soon, not now: aiohttp's handler finishes setting up first)
            self._loop.call_soon(transport.abort)
            self._overflow += 1
            self._overflow_from = address
            if self._overflow_timer is None:
                self._report_overflow()
            return False
        deadline = self._loop.time() + self.handshake_timeout
        timer = self._loop.call_at(deadline, expire, key, transport)
        self._pending[key] = [deadline, timer, address, transport, 0]  # (0: bytes received)
        return True

    def _make_room_for(self, address: str) -> bool:
        """All slots are taken: close the oldest pending connection of the
        address holding the most, when that is more than `address` would
        then hold. A stranger keeping every slot busy with silent
        connections (reopened as each times out) locked every other
        client out; now each newcomer from elsewhere takes one of its
        slots, and it cannot take one back from anyone holding fewer."""
        held = Counter(entry[2] for entry in self._pending.values())
        heaviest, most = held.most_common(1)[0]
        if most <= held[address] + 1:
            return False
        # Not one part-way through the challenge, unless it has been at it
        # longer than a peer takes (a review: a client evicted mid-handshake
        # fails outright, where one refused as it connects is tried again)
        connected_before = self._loop.time() - _EVICTABLE_AFTER + self.handshake_timeout  # (as deadlines)
        evictable = [h for h, entry in self._pending.items() if entry[2] == heaviest
                     and (entry[1] is not None or entry[0] < connected_before)]
        if not evictable:
            return False
        victim = min(evictable, key=lambda h: self._pending[h][0])
        _, timer, _, transport, _ = self._pending.pop(victim)
        if timer is not None:
            timer.cancel()
        self.refusals.warn("refused %s from %s: closed while pending, to make room for one from %s (%s "
                           "held %d of the %d handshake slots)", self.noun, heaviest, address, heaviest,
                           most, self.max_pending)
        _close(victim, transport)
        return True

    def received(self, handler, count: int) -> bool:
        """`count` more bytes have come on `handler`'s connection: False (and
        the connection closed, the refusal logged) when a pending one has
        now sent more than PENDING_MAX_BYTES."""
        entry = self._pending.get(handler)
        if entry is None:
            return True  # authenticated (or refused already)
        entry[4] += count
        if entry[4] <= PENDING_MAX_BYTES:
            return True
        self._pending.pop(handler)
        if entry[1] is not None:
            entry[1].cancel()
        self.refusals.warn("refused %s from %s: it sent more than %d KiB before authenticating", self.noun,
                           entry[2], PENDING_MAX_BYTES // 1024)
        entry[3].abort()
        return False

    def connection_lost(self, handler, exc=None) -> None:
        self.authenticated(handler)  # (or gone: either way no longer pending)
        super().connection_lost(handler, exc)

    def authenticated(self, handler) -> None:
        entry = self._pending.pop(handler, None)
        if entry is not None and entry[1] is not None:
            entry[1].cancel()

    def handshake_deadline(self, handler) -> float:
        """The websocket is up: the handshake's own code enforces the rest of
        the time (to say what was missing) and stops our timer. (A handler
        no longer pending has just expired: its deadline is now.)"""
        entry = self._pending.get(handler)
        if entry is None:
            return self._loop.time()
        if entry[1] is not None:
            entry[1].cancel()
            entry[1] = None
        return entry[0]

    def close(self) -> None:
        """The server stops: report the refusals not reported yet."""
        self.refusals.close()
        if self._overflow_timer is not None:
            self._overflow_timer.cancel()
            self._report_overflow(again=False)

    def _expire(self, handler, transport) -> None:
        if self._pending.pop(handler, None) is None:
            return
        self.refusals.warn("refused %s from %s: %s", self.noun, _address(transport),
                           _no_handshake(self.handshake_timeout, "it sent no websocket upgrade"))
        transport.abort()

    def _expire_tls(self, front, transport) -> None:
        """Only a backstop: start_tls's own time limit (the same) ends a TLS
        handshake, and the refusal is logged where it fails."""
        entry = self._pending.get(front)
        if entry is not None:  # (start_tls's timer, set a moment after ours, has yet to fire)
            entry[1] = self._loop.call_later(_TLS_BACKSTOP, self._abort_tls, front, transport)

    def _abort_tls(self, front, transport) -> None:
        if self._pending.pop(front, None) is not None:
            _close(front, transport)

    def _report_overflow(self, again: bool = True) -> None:
        """Refusals over max_pending are reported at once, then counted and
        reported at most every few seconds: a flood of connections must not
        become a flood of log lines."""
        self._overflow_timer = None
        if not self._overflow:
            return
        what = (f"a connection from {self._overflow_from}" if self._overflow == 1 else
                f"{self._overflow} connections (the latest from {self._overflow_from})")
        log.warning("refused %s: %d handshakes already pending (such refusals are reported at most "
                    "every %g s)", what, self.max_pending, _OVERFLOW_LOG_EVERY)
        self._overflow = 0
        if again:
            self._overflow_timer = self._loop.call_later(_OVERFLOW_LOG_EVERY, self._report_overflow)


def _close(key, transport) -> None:
    """The guard closes a pending connection (`key`: a handler, or a
    `_TLSFront` before its TLS handshake is done)."""
    transport.abort()
    if isinstance(key, _TLSFront):
        key.cancel_handshake()


class _TLSFront(asyncio.Protocol):
    """A connection to a TLS port until its TLS handshake is done (the
    server's `_tls_handshake`), then the guard's handler's: what the TLS
    layer read past the handshake before the handler took over is kept
    and handed to it. The handshake begins with the connection's first
    bytes (`first_bytes`): one closed before sending any (a port check,
    the start-up probe of a cluster's peers: `kernel.net._relay._refuses`)
    asked for nothing, and is let go in silence, as a plain port does;
    a TLS handshake begun at once failed on it, a refusal in the log."""

    def __init__(self, server: AuthenticatedServer) -> None:
        self._server = server
        self._handler: asyncio.Protocol | None = None
        self._early: list[bytes] = []
        self._eof = self._lost = False
        self._transport: asyncio.Transport | None = None  # (the TCP one, until its first bytes come)
        # True once the first bytes came, False when the connection ended before any
        self._first: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.handshake: asyncio.Task | None = None  # (the server's `_tls_handshake`, once admitted)

    def cancel_handshake(self) -> None:
        """Closed by the guard (evicted to make room, or past its time
        limit): its TLS handshake ends with it. Evicted by a newcomer
        accepted in the same turn of the loop, before its handshake task had
        run, it ran all the same: start_tls on the closed socket, an SSL
        object waiting for a ClientHello until the time limit, holding no
        slot. Cancelled before it runs, it never begins."""
        if self.handshake is not None:
            self.handshake.cancel()

    def connection_made(self, transport) -> None:
        if self._handler is None:  # the TCP connection (not the TLS one start_tls makes)
            self._transport = transport
            self._server._start_tls(self, transport)

    async def first_bytes(self) -> bool:
        """Whether the connection sent anything before it ended (False: it
        closed, or was reset, without a byte)."""
        return await self._first

    def replay_to(self, transport) -> None:
        """What came before the TLS layer took over (the first bytes, and on
        uvloop's loop what it read after them: it starts reading right after
        connection_made, paused or not), fed to it, in order, before it reads
        anything more."""
        early, self._early = self._early, []
        layer = transport.get_protocol()
        for data in early:
            while data:
                buffer = layer.get_buffer(len(data))
                n = min(len(buffer), len(data))
                buffer[:n] = data[:n]
                layer.buffer_updated(n)
                data = data[n:]

    def hand_over(self, tls: asyncio.Transport, handler: asyncio.Protocol) -> None:
        if self._lost:
            return
        self._handler = handler
        tls.set_protocol(handler)
        handler.connection_made(tls)
        for data in self._early:
            handler.data_received(data)
        self._early = []
        if self._eof:
            handler.eof_received()

    def data_received(self, data: bytes) -> None:
        self._early.append(data)
        if not self._first.done():  # (the handshake's first bytes: start_tls's layer reads the rest)
            self._transport.pause_reading()
            self._first.set_result(True)

    def eof_received(self):
        self._eof = True
        if not self._first.done():  # (nothing sent: the TCP connection closes, no TLS begun)
            self._first.set_result(False)
            return False
        return True  # (the handler decides, once it has the connection)

    def connection_lost(self, exc) -> None:
        self._lost = True
        if not self._first.done():
            self._first.set_result(False)
        self._server._tls_ended(self)  # (gone before start_tls's layer took over; else done already)


def _address(transport) -> str:
    peer = transport.get_extra_info("peername")
    return _as_known(str(peer[0])) if peer else "an unknown address"


def _remote(request: web.BaseRequest) -> str:
    return _as_known(request.remote or "an unknown address")


def _as_known(host: str) -> str:
    """A peer's address as its user knows it: an IPv4 peer of a dual-stack
    socket (an executor's prepared link port on a host name) is
    ::ffff:a.b.c.d there, said a.b.c.d, as when the process listened on
    0.0.0.0 itself (each refusal, a twin's address)."""
    if not host.startswith("::ffff:"):
        return host
    try:
        mapped = ipaddress.IPv6Address(host).ipv4_mapped
    except ValueError:
        return host
    return host if mapped is None else str(mapped)


def _no_handshake(timeout: float, what: str) -> str:
    return f"no handshake within {timeout:g} s of connecting ({what})"


def _raise_message_limit(ws: web.WebSocketResponse, protocol, limit: int) -> None:
    """After authentication: let the peer's messages be as large as a data
    frame. aiohttp fixes the limit when the websocket is prepared (its C
    reader keeps it private), so a new reader on the same message queue
    takes the old one's place. Safe here: the peer sent its one handshake
    message and waits for our answer, so the old reader holds no partial
    frame (a peer that sent more anyway, with the secret, only breaks its
    own link). The websocket's heartbeat hook (`ws_heartbeat`) stays: without
    it a pong, which aiohttp notes only through that hook, went unnoticed,
    and every connection was dropped 1.5 heartbeats in."""
    reader = WebSocketReader(ws._reader, limit, compress=False, decode_text=True)
    heard = getattr(protocol, "_data_received_cb", None)
    protocol._payload_parser = None  # set_parser() insists on an empty place
    protocol.set_parser(reader, data_received_cb=heard)
    ws._parser = reader  # the response owns its reader (aiohttp keeps a weak reference)


class AuthenticatedServer:
    """A websocket server on `host:port` (at `path`) that lets in only
    clients that prove they hold the shared secret (the challenge-response
    above, both ways), guarded against strangers: before a connection
    authenticates it may cost little: messages of at most
    HANDSHAKE_MAX_MESSAGE bytes, no compression (ever), small HTTP header
    limits, at most `max_pending` such connections (with TLS, counting
    those still in their TLS handshake; the next is closed at once) and
    `handshake_timeout` seconds from connecting to authenticated
    (then closed, and logged; with TLS, the TLS handshake before gets as
    long again). Every refusal is logged as `refused {noun} from ADDRESS:
    why` (past REFUSALS_LOGGED in a few seconds, counted: `_RefusalLog`).
    After authentication messages may be `max_frame` bytes, and
    `_session(ws, peer, meta, address)` serves the connection (the links
    between cluster processes; the coordinator of `kernel.system`).
    `ws_heartbeat` (seconds; None: none) is aiohttp's websocket heartbeat
    on each connection, for a protocol without liveness of its own (a
    service's): a peer silent that long is pinged, and its connection
    ended (the session's `ws` yields an ERROR) when no pong comes within
    half as long."""

    noun = "a connection"
    path = PATH

    def __init__(self, host: str, port: int, secret, process: int, *, max_frame: int = DEFAULT_MAX_FRAME,
                 ssl_context=None, meta=None, max_pending: int | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT, ws_heartbeat: float | None = None,
                 sock: socket.socket | list[socket.socket] | None = None,
                 instance: str | None = None) -> None:
        self.host, self.port = host, port
        # this process's token, told in the handshake's answer (a cluster's: `LinkServer.dialled`)
        self.instance = instance
        # A socket already bound and listening, served as it is (host and port
        # then unused): a port picked free, closed and bound again later could
        # be taken meanwhile (kernel.system's executor hands its job processes theirs);
        # several, one port: localhost's addresses
        self.sock = sock
        self.ws_heartbeat = ws_heartbeat
        self._secret = _secret(secret)
        self.process = process
        self.max_frame = max_frame
        self.ssl_context = ssl_context
        self.meta = meta
        self.max_pending = max_pending or MAX_PENDING
        self.handshake_timeout = handshake_timeout
        # the latest refusals (a flood of strangers must not grow this)
        self.failures: deque[Exception] = deque(maxlen=16)
        self._runner: web.ServerRunner | None = None
        self._guard: _Guard | None = None
        self._listeners: list[asyncio.AbstractServer] = []
        self._sessions: set = set()  # the authenticated peers' websockets, while served (stop closes them)
        self._tls_handshakes: set[asyncio.Task] = set()  # TLS handshakes under way (_TLSFront)

    @property
    def pending(self) -> int:
        """Connections that have not authenticated yet."""
        return 0 if self._guard is None else self._guard.pending

    async def start(self) -> None:
        self._guard = _Guard(self._serve, max_pending=self.max_pending,
                             handshake_timeout=self.handshake_timeout, noun=self.noun, access_log=None,
                             max_line_size=_HTTP_MAX_LINE, max_field_size=_HTTP_MAX_LINE,
                             max_headers=_HTTP_MAX_HEADERS)
        self._guard.failures = self.failures
        # (aiohttp's shutdown waits this long for a handler still running: a
        # session left open, which `stop` has just been told to close)
        self._runner = web.ServerRunner(self._guard, shutdown_timeout=_CLOSE_WAIT)
        await self._runner.setup()
        # (not aiohttp's TCPSite: it leaves a TLS handshake asyncio's 60 s;
        # the TLS handshake comes before the guard sees the connection)
        accept = self._guard if self.ssl_context is None else self._tls_front
        loop = asyncio.get_running_loop()
        if self.sock is not None:
            for sock in self.sock if isinstance(self.sock, list) else [self.sock]:
                self._listeners.append(await loop.create_server(accept, sock=sock))
            self.port = self._listeners[0].sockets[0].getsockname()[1]
        else:
            self._listeners.append(await loop.create_server(accept, self.host, self.port))
        if self.port == 0:
            self.port = self._listeners[0].sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close the peers still linked (1001, going
        away), 2 x _CLOSE_WAIT seconds at most for their answers, then
        aiohttp's shutdown, as bounded: a peer that never answers (stopped,
        cut off, reading nothing) holds the stop up ~4 s, not the 60 s
        aiohttp's shutdown waited for every websocket still open."""
        for listener in self._listeners:
            listener.close()
        for handshake in list(self._tls_handshakes):
            handshake.cancel()
        if self._guard is not None:
            self._guard.close()
        if self._sessions:
            closing = [asyncio.ensure_future(ws.close(code=1001, message=b"server stopping"))
                       for ws in list(self._sessions)]
            await asyncio.wait(closing, timeout=2 * _CLOSE_WAIT)
        if self._runner is not None:
            await self._runner.cleanup()

    def _tls_front(self) -> _TLSFront:
        return _TLSFront(self)

    def _start_tls(self, front: _TLSFront, transport: asyncio.Transport) -> None:
        if not self._guard.tls_started(front, transport):  # over max_pending: closed, no TLS
            return
        handshake = front.handshake = asyncio.ensure_future(self._tls_handshake(front, transport))
        self._tls_handshakes.add(handshake)
        handshake.add_done_callback(self._tls_handshakes.discard)

    async def _tls_handshake(self, front: _TLSFront, transport: asyncio.Transport) -> None:
        """The TLS handshake (the guard's time limit), then the connection
        is the guard's; a failed one is a refusal, logged: asyncio's own TLS
        server dropped it in silence (an OSError: said in debug mode only),
        so a coordinator refusing an executor's certificate said nothing,
        and the executor saw only "Server disconnected". A connection that
        ends before its first byte is no refusal (`_TLSFront`)."""
        address = _address(transport)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.handshake_timeout
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    if not await front.first_bytes():
                        return
            except TimeoutError:
                transport.abort()
                self._guard.refusals.warn("refused %s from %s: %s", self.noun, address,
                                          _no_handshake(self.handshake_timeout, "it sent no TLS handshake"))
                return
            except asyncio.CancelledError:  # (evicted, or the server stops: start_tls would close it too)
                transport.abort()
                raise
            # start_tls pauses reading and puts its TLS layer in place at once
            # (this step), then calls the layer's connection_made and resumes
            # reading (the next): this callback, queued before, runs between.
            loop.call_soon(front.replay_to, transport)
            tls = await loop.start_tls(
                transport, front, self.ssl_context, server_side=True,
                ssl_handshake_timeout=max(deadline - loop.time(), 0.001))
        except OSError as exc:  # an ssl.SSLError, a reset, the time limit (start_tls closed it)
            if isinstance(exc, ssl.SSLError) and exc.reason == "HTTP_REQUEST":  # a peer with TLS off
                why = "plain HTTP, on a TLS port: TLS is off there (no --tls-cert) and on here?"
                self.failures.append(LinkError(f"{address} sent {why}"))
                self._guard.refusals.warn("refused %s from %s: %s", self.noun, address, why)
                return
            why = getattr(exc, "verify_message", None) or str(exc) or type(exc).__name__
            self._guard.refusals.warn("refused %s from %s: TLS handshake failed (%s)", self.noun, address,
                                      why)
            return
        finally:  # (failed, cancelled by `stop`, or done: before the guard counts it again, below)
            self._tls_ended(front)
        front.hand_over(tls, self._guard())

    def _tls_ended(self, front: _TLSFront) -> None:
        if self._guard is not None:
            self._guard.tls_ended(front)

    async def _serve(self, request: web.BaseRequest):
        # A refused request's answer closes the connection (`force_close`:
        # `Connection: close`): else a stranger could pipeline thousands of
        # requests on one keep-alive connection, each answered and logged.
        if request.path != self.path:
            # (the path decoded: a stranger's %0A and %1B were a new line and an escape of its own
            # in our log)
            self._guard.refusals.warn("refused %s from %s: plain HTTP (%s %s), not %s", self.noun,
                                      _remote(request), request.method, _printable(request.path[:100]),
                                      self.noun)
            refusal = web.HTTPNotFound()
            refusal.force_close()
            raise refusal
        return await self._accept(request)

    async def _accept(self, request: web.BaseRequest):
        # No compression and a handshake-sized limit until the peer has
        # authenticated (then _raise_message_limit): a stranger's message
        # is refused at its head, not buffered (nor unfolded) first.
        ws = web.WebSocketResponse(max_msg_size=HANDSHAKE_MAX_MESSAGE, compress=False,
                                   autoping=True, timeout=_CLOSE_WAIT, heartbeat=self.ws_heartbeat)
        peer_address = _remote(request)
        try:
            await ws.prepare(request)
        except web.HTTPException as exc:
            self._guard.refusals.warn("refused %s from %s: %s without a websocket upgrade (%s)",
                                      self.noun, peer_address, request.method, exc.reason)
            exc.force_close()  # (as in _serve)
            raise
        except ConnectionError:  # gone before our answer: a refusal like any other, rate-limited
            self._closed_in_handshake(peer_address)
            # (a response aiohttp can end: writing it to the closed connection
            # fails quietly; the websocket, never prepared, cannot be ended)
            gone = web.Response(status=400)
            gone.force_close()
            return gone
        deadline = self._guard.handshake_deadline(request.protocol)
        try:
            async with asyncio.timeout_at(deadline):
                peer, meta = await self._handshake(ws, peer_address, request.protocol)
        except TimeoutError:
            await self._refuse(ws, peer_address, LinkError(
                _no_handshake(self.handshake_timeout, "it did not answer the challenge")))
            return ws
        except (AuthenticationFailed, LinkError, msgspec.DecodeError) as exc:
            await self._refuse(ws, peer_address, exc)
            return ws
        except ConnectionError:
            self._closed_in_handshake(peer_address)
            return ws
        self._sessions.add(ws)
        try:
            await self._session(ws, peer, meta, peer_address)
        finally:
            self._sessions.discard(ws)
        return ws

    def _closed_in_handshake(self, address: str) -> None:
        # Without this, aiohttp logged each one as an ERROR with its
        # traceback: a stranger closing upgrades at once flooded the log.
        self._guard.refusals.warn("refused %s from %s: it closed the connection during the handshake",
                                  self.noun, address)

    async def _refuse(self, ws, address: str, exc: Exception) -> None:
        if not (isinstance(exc, _Unexpected) and str(exc).endswith(ITS_OWN_LINK)):  # (a peer of ours asking)
            self._guard.refusals.warn("refused %s from %s: %s", self.noun, address, exc)
            self.failures.append(exc)
        if isinstance(exc, AuthenticationFailed):
            await ws.close(code=AUTH_FAILED, message=b"authentication failed")
        elif isinstance(exc, _Unexpected):  # (a close frame's reason: 123 bytes at most)
            await ws.close(code=UNEXPECTED, message=str(exc).encode()[:123])
        else:
            await ws.close(code=1002)

    async def _handshake(self, ws, address, protocol) -> tuple[int, object]:
        nonce = os.urandom(32).hex()
        await ws.send_str(msgspec.json.encode({"process": self.process, "nonce": nonce}).decode())
        message = await ws.receive()
        if message.type is _ERROR:  # a message over the limit, compression, a broken frame
            raise LinkError(f"{address} broke the handshake: {message.data}")
        if message.type != aiohttp.WSMsgType.TEXT:
            raise LinkError(f"{address} did not start the handshake")
        hello = _handshake_json(message.data)
        if not isinstance(hello, dict) or not isinstance(hello.get("process"), int):
            raise LinkError(f"{address} sent a malformed handshake")
        peer = hello["process"]
        expected = _mac(self._secret, b"client", nonce, peer)
        if not _same_mac(hello.get("mac"), expected):
            raise AuthenticationFailed(f"process {peer} at {address}")
        ws.peer_instance = hello.get("instance")  # (the dialler's token, where it tells one)
        unexpected = self._its_own_link(peer, ws.peer_instance) or self._unexpected(peer, address)
        if unexpected is not None:
            raise _Unexpected(unexpected)
        self._guard.authenticated(protocol)
        _raise_message_limit(ws, protocol, self.max_frame + FRAME.size)
        their_nonce = str(hello.get("nonce", ""))
        await ws.send_str(msgspec.json.encode(
            {"mac": _mac(self._secret, b"server", their_nonce, self.process), "meta": self.meta,
             **({} if self.instance is None else {"instance": self.instance})}).decode())
        return peer, hello.get("meta")

    def _its_own_link(self, peer: int, instance) -> str | None:
        """Why an authenticated `peer` whose token is `instance` is refused
        as already linked here, by its own link (no stranger, not logged), or None."""
        return None

    def _unexpected(self, peer: int, address: str) -> str | None:
        """Why an authenticated `peer` at `address` is not taken here (said
        to it in the close frame, and logged), or None."""
        return None

    async def _session(self, ws, peer: int, meta, address: str) -> None:
        raise NotImplementedError


class LinkServer(AuthenticatedServer):
    """Accepts links from higher-numbered processes on `host:port`.

    `on_link(link)` is called (on the loop) for every authenticated peer;
    the server reads that link's frames until it closes. `channels` is a
    set, or a function of the peer's process id giving its set; `expected`,
    when given, is the set of process ids that may connect (once each).
    Strangers cost it little (`AuthenticatedServer`).
    """

    noun = "a link"

    def __init__(self, host: str, port: int, secret, process: int, channels, on_frame_for,
                 on_link=None, window: int = DEFAULT_WINDOW, max_frame: int = DEFAULT_MAX_FRAME,
                 ssl_context=None, heartbeat: float = FROM_ENVIRONMENT, meta=None,
                 on_mismatch=None, expected=None, max_pending: int | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 sock: socket.socket | list[socket.socket] | None = None,
                 instance: str | None = None) -> None:
        # every expected peer may dial at once, and retry, without a refusal
        super().__init__(host, port, secret, process, max_frame=max_frame, ssl_context=ssl_context,
                         meta=meta, max_pending=max_pending or max(MAX_PENDING, 2 * len(expected or ())),
                         handshake_timeout=handshake_timeout, sock=sock, instance=instance)
        self.channels = channels
        self.on_frame_for = on_frame_for  # peer -> on_frame callback
        self.on_link = on_link
        self.window = window
        self.heartbeat = heartbeat_or_environment(heartbeat)
        self.on_mismatch = on_mismatch  # called with the LinkMismatch (or the TwinProcess)
        self.expected = expected
        self.links: dict[int, Link] = {}
        self.link_addresses: dict[int, str] = {}  # where each linked peer connected from
        # the lower-numbered peers this process dialled and linked (their hosts, and the token
        # each told in its answer), told by its relay: a second process claiming one of their
        # ids is a twin too (`_unexpected`)
        self.dialled: dict[int, tuple[str, str | None]] = {}


    def _its_own_link(self, peer: int, instance) -> str | None:
        if peer in self.dialled and instance is not None and self.dialled[peer][1] == instance:
            # the very process we dialled, asking at its start-up timeout why we had not
            # connected (`LinkRelay._linked_elsewhere`) as our link to it completed: no twin
            # (both ends said "two processes claim process id 0", each run ended)
            return f"process {peer} is linked to this process: {ITS_OWN_LINK}"
        if self.expected is not None and 0 <= peer < self.process and peer not in self.dialled:
            # the same question come before our link to it had its answer (it took the link,
            # we have not heard yet): no stranger either ("not a peer" was logged, the run went on)
            return f"process {peer} is being linked by this process: {ITS_OWN_LINK}"
        return None

    def _unexpected(self, peer: int, address: str) -> str | None:
        # In the handshake, before our answer: a second process given the same
        # --process-id was refused only after it, and its link's close (code
        # 1008) ended its run as "lost process 0: ... closed: code 1008".
        if self.expected is None:
            return None
        if peer in self.links or peer in self.dialled:
            linked = self.link_addresses.get(peer) or self.dialled.get(peer, ("?",))[0]
            if self.on_mismatch is not None:
                # Which of the two is the process meant to be `peer` no end can
                # tell: the one first to connect was taken, and the run went on
                # with it, perhaps the wrong machine, only a warning said here.
                self.on_mismatch(TwinProcess(
                    f"two processes claim process id {peer}: one at {linked} (linked), another at "
                    f"{address} (refused): is --process-id {peer} given to two processes, or do the "
                    "--peers lists differ?"))
            return f"process {peer} at {linked} is already linked"
        if peer not in self.expected:
            return f"process {peer} is not a peer of this process"
        return None

    async def _session(self, ws, peer: int, meta, peer_address: str) -> None:
        # (again: two handshakes as one process may have overlapped)
        why = (self._its_own_link(peer, getattr(ws, "peer_instance", None))
               or self._unexpected(peer, peer_address))
        if why is not None:
            if not why.endswith(ITS_OWN_LINK):
                log.warning("refused a link from %s: %s", peer_address, why)
            await ws.close(code=UNEXPECTED, message=why.encode()[:123])
            return
        try:
            _check_meta(self.meta, meta, f"process {peer} at {peer_address}")
        except LinkMismatch as exc:  # authenticated and expected, but running something else
            if self.on_mismatch is None:  # (else the caller says it: a cluster's run ends with it)
                log.error("%s", exc)
            self.failures.append(exc)
            await ws.close(code=MISMATCH, message=b"incompatible peer")
            if self.on_mismatch is not None:
                self.on_mismatch(exc)
            return
        channels = self.channels(peer) if callable(self.channels) else self.channels
        link = Link(ws, peer, channels, self.on_frame_for(peer), self.window, self.heartbeat)
        self.links[peer] = link
        self.link_addresses[peer] = peer_address
        if self.on_link is not None:
            self.on_link(link)
        try:
            await link.run()
        except LinkError as exc:
            self.failures.append(exc)
        finally:
            self.links.pop(peer, None)
            self.link_addresses.pop(peer, None)


_WS_HEAD = struct.Struct(">BB")  # a websocket frame's first two bytes: FIN and opcode, mask and length
_WS_LENGTH = {126: struct.Struct(">H"), 127: struct.Struct(">Q")}  # the extended payload lengths


class _UntilServerAuthenticated:
    """A dialler's websocket parser until the server has proved it holds the
    secret: what a stranger answering at a peer's address may make it hold
    is as little as what a server lets a stranger send (`LinkServer`).
    aiohttp's parser takes data frames' size from the start (`max_frame`),
    so a listener that upgraded the connection could make a dialler buffer
    16 MiB for its hello (a review: 15 MiB, 115 MB of peak RSS in the relay).
    Here the frames' heads are read as they come, before aiohttp's parser
    sees them: the server's two messages (its hello, its answer) may be
    HANDSHAKE_MAX_MESSAGE bytes each, refused at their head, and everything
    up to the end of the answer PENDING_MAX_BYTES in all. What comes after
    the answer (a peer's first data frames, sent right after it) is held,
    reading paused, until the dialler has checked the answer's mac
    (`authenticated`): then aiohttp's parser gets it, and this one leaves
    the connection, costing the data path nothing after it."""

    __slots__ = ("_ends_message", "_head", "_held", "_in_message", "_messages", "_protocol", "_queue",
                 "_reader", "_received", "_skip")

    def __init__(self, reader, queue, protocol) -> None:
        self._reader = reader  # aiohttp's parser (its limit: a data frame's)
        self._queue = queue  # where it puts the messages (and we an error)
        self._protocol = protocol  # aiohttp's connection
        self._head = b""  # the head of a frame, while incomplete
        self._skip = 0  # bytes of the current frame's payload still to come
        self._ends_message = False  # the current frame ends a data message
        self._in_message = 0  # bytes of the data message under way
        self._messages = 0  # data messages complete: the hello, then the answer
        self._received = 0  # bytes up to the end of the answer
        self._held: bytes | None = None  # after the answer, until `authenticated`

    def feed_data(self, data) -> tuple[bool, bytes]:
        if self._held is not None:  # (reading is paused: a read under way at most)
            self._held += data
            return False, b""
        try:
            end = self._scan(data)
        except WebSocketError as exc:
            self._queue.set_exception(exc)
            return True, b""  # (aiohttp drops the connection's parser and reads nothing more)
        if self._messages == 2:  # the answer is whole: what follows waits for its check
            self._held = bytes(data[end:])
            data = data[:end]
            self._protocol.transport.pause_reading()
        return self._reader.feed_data(data) if data else (False, b"")

    def _scan(self, data) -> int:
        """Where in `data` the server's answer ends (len(data) where not in
        it); a WebSocketError where the server sent too much."""
        pos, size = 0, len(data)
        while pos < size and self._messages < 2:
            if self._skip:
                step = min(self._skip, size - pos)
                self._skip -= step
                pos += step
            else:
                taken = len(self._head)
                self._head += bytes(data[pos:pos + 14 - taken])
                length = self._frame(self._head)
                if length is None:  # (the rest of the head comes in the next read)
                    pos = size
                    break
                pos += length - taken
                self._head = b""
            if not self._skip and self._ends_message:
                self._ends_message = False
                self._in_message = 0
                self._messages += 1
        self._received += pos
        if self._received > PENDING_MAX_BYTES:
            raise WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, f"it sent more than "
                                 f"{PENDING_MAX_BYTES // 1024} KiB before authenticating")
        return pos

    def _frame(self, head: bytes) -> int | None:
        """The length of a frame's head (None while incomplete); its
        payload's length goes to `_skip`."""
        if len(head) < 2:
            return None
        first, second = _WS_HEAD.unpack_from(head)
        extended = _WS_LENGTH.get(second & 0x7F)
        length = 2 + (extended.size if extended else 0) + (4 if second & 0x80 else 0)
        if len(head) < length:
            return None
        payload = extended.unpack_from(head, 2)[0] if extended else second & 0x7F
        if first & 0x0F < 8:  # a data frame (text, binary, continuation): the rest is aiohttp's to judge
            self._in_message += payload
            if self._in_message > HANDSHAKE_MAX_MESSAGE:
                raise WebSocketError(WSCloseCode.MESSAGE_TOO_BIG, f"a message of {self._in_message} bytes "
                                     f"before authenticating, over the {HANDSHAKE_MAX_MESSAGE} a dialler "
                                     "reads")
            self._ends_message = bool(first & 0x80)
        self._skip = payload
        return length

    def authenticated(self) -> None:
        """The server's answer checks out: aiohttp's parser reads the rest,
        first what came after the answer. (Reading resumes first: held
        frames that fill aiohttp's queue pause it again, as they should.)"""
        protocol = self._protocol
        held, self._held = self._held or b"", None
        protocol._payload_parser = self._reader
        if protocol.transport is not None:
            protocol.transport.resume_reading()
        if held:
            protocol.data_received(held)

    def feed_eof(self) -> None:
        self._reader.feed_eof()


class _DiallerWebSocket(aiohttp.ClientWebSocketResponse):
    """aiohttp's client websocket whose parser is `_UntilServerAuthenticated`
    until the handshake is done (`guard`, from the connection's first
    websocket byte: aiohttp parses what came with the upgrade as it sets the
    parser in place, before `ws_connect` returns)."""

    guard: _UntilServerAuthenticated | None = None

    @property
    def _parser(self):
        return self.guard if self.guard is not None else self._reader_parser

    @_parser.setter
    def _parser(self, reader) -> None:  # (aiohttp sets its parser here, then hands this to the connection)
        self._reader_parser = reader
        if reader is None:
            self.guard = None
        elif self.guard is None:
            self.guard = _UntilServerAuthenticated(reader, self._reader, self._conn.protocol)


async def dial(url: str, secret, process: int, channels, on_frame, *, window: int = DEFAULT_WINDOW,
               max_frame: int = DEFAULT_MAX_FRAME, timeout: float = 30.0, ssl=True,
               session: aiohttp.ClientSession | None = None, heartbeat: float | None = FROM_ENVIRONMENT,
               meta=None, instance: str | None = None) -> tuple[Link, aiohttp.ClientSession]:
    """Connect to the server at `url` (ws://host:port), retrying until
    `timeout` seconds have passed; authenticate; return the link (run its
    `run()` to read) and the client session (close it after the link).
    `instance`: this process's token, told in the handshake (`connect`)."""
    ws, peer, _, session = await connect(url, secret, process, max_frame=max_frame, timeout=timeout,
                                         ssl=ssl, session=session, meta=meta, instance=instance)
    return Link(ws, peer, channels, on_frame, window, heartbeat), session


async def connect(url: str, secret, process: int, *, path: str = PATH, max_frame: int = DEFAULT_MAX_FRAME,
                  timeout: float = 30.0, ssl=True, session: aiohttp.ClientSession | None = None,
                  meta=None, check_meta: bool = True, retry: bool = True, heartbeat: float | None = None,
                  handshake_timeout: float = HANDSHAKE_TIMEOUT, instance: str | None = None):
    """Connect to an `AuthenticatedServer` at `url` (http://host:port, its
    websocket at `path`), retrying until `timeout` seconds have passed (one
    try without `retry`: the caller has a policy of its own), and
    authenticate both ways. Returns `(ws, the server's process id, the
    server's meta, the client session)` (close the session after the
    websocket). With `check_meta`, a server whose meta differs from `meta`
    is refused (`LinkMismatch`). `heartbeat`: aiohttp's websocket
    heartbeat (as `AuthenticatedServer`'s `ws_heartbeat`; None: none). A server that refuses the connection
    before authenticating (before the websocket upgrade, or after it:
    breaking the handshake, or sending no hello within `handshake_timeout`
    seconds, what a server gives a dialler) is tried again later than one
    not there yet (REFUSED_FIRST, doubling), and its refusal, once no more
    tries are left, is a `LinkRefused`. A `session` of the caller's reads what the
    server sends before authenticating with its own limits, unless its
    `ws_response_class` is `_DiallerWebSocket` (the session made here)."""
    key = _secret(secret)
    own_session = session is None
    progress = DialProgress()  # (a try out of time: a connection never made, or made and left silent)
    if session is None:
        # (its websockets read little until the server has authenticated: _DiallerWebSocket)
        session = aiohttp.ClientSession(ws_response_class=_DiallerWebSocket, trace_configs=[progress.trace()])
        # aiohttp sends a GET (the upgrade) again, at once, on a new
        # connection, when the server closes or resets the first before
        # answering: each refused try was two connections, two refusals in
        # the server's log. This loop has its own policy. (A private flag,
        # aiohttp 3.10 on; without it, the double tries come back, no more.)
        session._retry_connection = False
    deadline = asyncio.get_running_loop().time() + timeout
    delay = 0.01  # peers of one cluster start within moments of each other: retry soon
    refused_pauses = backoff(REFUSED_FIRST, REFUSED_MOST)
    refused_once = False  # a try the server closed before answering (the last one may find it gone)
    probed = False  # (`_speaks_first`: once a dial)
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                # bounded: a port that accepts and never answers (a stopped
                # peer, another program) must not outlast the timeout
                progress.start()
                ws = await asyncio.wait_for(
                    session.ws_connect(url + path, max_msg_size=max_frame + FRAME.size, ssl=ssl,
                                       heartbeat=heartbeat),
                    max(0.01, deadline - loop.time()))
            except TimeoutError:
                silent = progress.silence(url)
                error = LinkError(f"could not reach {url} within {_seconds(timeout)} s: {silent}")
                # (the last try ran out of time, as one may that starts with moments left
                # on a loaded machine: the tries the server closed before it are said all
                # the same, as where it had ended, below)
                error.refused_once = refused_once
                raise error from silent
            except aiohttp.ClientResponseError as exc:  # (an HTTP answer, no websocket: not our server)
                # (on one line: aiohttp's parser says what it could not parse over four)
                what = " ".join(str(exc.message).split())[:200]
                status = exc.status
                if exc.history:  # (a redirect aiohttp followed: its page's answer was said, `200 OK`)
                    status, what = exc.history[0].status, "Invalid response status"
                if what == "Invalid response status":  # (aiohttp's for any but 101: say the status's)
                    what = _status_phrase(status) or what
                raise NotAKernelServer(f"{url} answered, but not as a kernel server ({status} "
                                       f"{what})") from exc
            except (aiohttp.ClientConnectionError, OSError) as exc:
                _refuse_untrusted_certificate(url, exc)
                if not probed and url.startswith("http:") and any(
                        isinstance(c, aiohttp.ClientConnectionResetError) for c in causes(exc)):
                    probed = True
                    first = await _speaks_first(url, min(_PROBE_WAIT, max(0.01, deadline - loop.time())))
                    if first:
                        raise NotAKernelServer(f"{url} answered, but not as a kernel server (it spoke first, "
                                               f"before any request: {first!r})") from exc
                refused = refused_by_server(exc)
                refused_once = refused_once or refused
                pause = next(refused_pauses) if refused else delay
                if not retry or loop.time() + pause > deadline:
                    within = f" within {_seconds(timeout)} s" if retry else ""
                    error = (LinkRefused if refused else LinkError)(
                        f"could not reach {url}{within}: {dial_failure_said(exc)}")
                    # (a server that closed the tries before answering, then ended before the
                    # last: what may tell why, TLS on there and off here, is said all the same)
                    error.refused_once = refused_once
                    raise error from exc
                await asyncio.sleep(pause)
                if not refused:
                    delay = min(delay * 2, 0.25)
                continue
            try:
                # The server's hello bounded per try, as the server bounds a dialler: one that
                # upgraded and then said nothing held the dial for its whole timeout (a
                # cluster's 30 s). Its answer to ours is not: see _handshake_within.
                seconds = max(_HANDSHAKE_MIN, deadline - loop.time())
                peer, their_meta = await _handshake_within(ws, key, process, url, meta, check_meta,
                                                           min(handshake_timeout, seconds), seconds, instance)
            except LinkRefused:
                # Broken before authenticating (closed or reset after the upgrade, or no
                # answer in time): a peer starting or restarting, as a refusal before the
                # upgrade, so tried again alike. (It ended a cluster's start at once: a
                # peer that is there may still be starting.) What is final stays final:
                # a wrong secret, a process id refused, garbage (not a LinkRefused).
                pause = next(refused_pauses)
                if not retry or loop.time() + pause > deadline:
                    raise
                await asyncio.sleep(pause)
                continue
            return ws, peer, their_meta, session
    except BaseException:
        if own_session:
            await session.close()
        raise


async def _handshake_within(ws, key: bytes, process: int, url: str, meta, check_meta: bool,
                            hello_within: float, seconds: float,
                            instance: str | None = None) -> tuple[int, object]:
    """`_client_handshake`, the server's hello within `hello_within`
    seconds and the whole within `seconds`, its failures said as a
    LinkError: a `LinkRefused` where the server broke it or did not finish
    it in time (a try again may find it ready).

    Once our hello is sent, the server may take the link as it answers: a
    dialler that gave up on an answer late by a moment (a server stalled
    between the two) closed a link the server had taken (a cluster's start
    ended, `lost process 1 ... it closed the link`), and dialled again to
    meet `process 1 is already linked`. That wait has the whole `seconds`,
    as it had before the hello had a bound of its own; a real server
    answers, or closes, within its own bound anyway."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    try:
        async with asyncio.timeout(hello_within) as bound:
            return await _client_handshake(ws, key, process, url, meta, check_meta,
                                           hello_sent=lambda: bound.reschedule(until), instance=instance)
    except TimeoutError:
        await _close_within(ws)
        raise LinkRefused(f"{url} did not finish the handshake in time") from None
    except (aiohttp.ClientError, ConnectionError) as exc:
        # the connection broke mid-handshake (a peer that died, or reset it): a LinkError as
        # every other way of not reaching it, never aiohttp's own error
        await _close_within(ws)
        raise LinkRefused(f"{url} broke the handshake ({type(exc).__name__}: {exc})") from exc
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError) as exc:
        # The server's handshake was garbage: something else answers there, which no retry
        # mends. (A LinkRefused, a cluster said "could not reach process 0 at ... within
        # 30 s: JSON is malformed ... (it closed the connection before answering: TLS on
        # there and off here, ...?)": reached, at once, and nothing closed.)
        await _close_within(ws)
        raise NotAKernelServer(f"{url} answered, but not as a kernel server (it broke the handshake: "
                               f"{type(exc).__name__}: {str(exc)[:200]})") from exc


async def _speaks_first(url: str, wait: float) -> bytes:
    """The first bytes the server at `url` (plain http) sends on a new
    connection before it is asked anything, within `wait` seconds (b"":
    none, or no connection). A kernel server, as any HTTP server, waits
    for the request; a program that speaks first (sshd's banner, SMTP's
    greeting) is another program. Where its bytes came before aiohttp
    had written the upgrade (uvloop reads at once), aiohttp's parser
    failed and closed the connection, and the write of the request said
    only "Cannot write to closing transport": taken for a server refusing
    the connection, it was retried until the timeout, then said as
    `could not reach ... within 30 s: Cannot write to closing transport`."""
    address = urlsplit(url)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address.hostname, address.port or 80), wait)
    except (OSError, TimeoutError):
        return b""
    try:
        return await asyncio.wait_for(reader.read(64), wait)
    except (OSError, TimeoutError):
        return b""
    finally:
        writer.transport.abort()


def _refuse_untrusted_certificate(url: str, exc: BaseException) -> None:
    """A certificate that does not verify never will: it was retried until
    the timeout (2 s for an executor, longer for a job's links), then said
    to be unreachable. Nor will a server that answers a TLS handshake
    without TLS (a peer with no --tls-cert): it was retried too, then said
    to be unreachable in OpenSSL's words (`[SSL: WRONG_VERSION_NUMBER]`)."""
    error = untrusted_certificate(exc)
    if error is not None:
        why = getattr(error, "verify_message", None) or error
        raise TLSFailed(f"{url} presented a TLS certificate that does not verify ({why}): no retry "
                        "mends that (is the certificate signed by the CA given, and issued for this "
                        "address?)") from exc
    if any(isinstance(e, ssl.SSLError) and e.reason == "WRONG_VERSION_NUMBER" for e in causes(exc)):
        raise TLSFailed(f"{url} answered without TLS: TLS is on here (--tls-cert) and off there, or "
                        "another program listens there") from exc


async def _close_within(ws, code: int = 1000, message: bytes = b"") -> None:
    """A dialler ends a handshake that failed: its close frame, then at most
    _CLOSE_WAIT seconds for the server's (then the connection is closed).
    aiohttp waits 10 s for it, reading on while messages come: a server
    that never answers one (a stranger at a peer's address, a stopped
    peer) held the dial past its timeout (a garbage hello: 10.6 s of a
    6 s timeout), or made its wait_for end first, hiding why
    (`authentication failed` said as `did not finish the handshake in
    time`)."""
    try:
        await asyncio.wait_for(ws.close(code=code, message=message), _CLOSE_WAIT)
    except TimeoutError:
        pass  # (aiohttp closed the connection as it was cancelled)


def _printable(text: str) -> str:
    """`text` with what is not printable (new lines, terminal escapes)
    escaped: for words of a server not authenticated yet, in our errors."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _handshake_json(data) -> object:
    """A handshake message's JSON. Nested deeper than the decoder recurses
    (4,000 '[' fit in what a stranger may send before authenticating) it
    is malformed, a DecodeError as any other garbage: msgspec's
    RecursionError went past both ends' handling of bad handshakes (the
    server's aiohttp logged a traceback for each, unlimited)."""
    try:
        return msgspec.json.decode(data)
    except RecursionError:
        raise msgspec.DecodeError("JSON nested too deep") from None


async def _client_handshake(ws, key: bytes, process: int, url: str, meta=None,
                            check_meta: bool = True, hello_sent=None,
                            instance: str | None = None) -> tuple[int, object]:
    message = await ws.receive()
    if message.type in _ENDED:  # (a server closing: stopping, or at its own time limit)
        await _close_within(ws)
        raise LinkRefused(f"{url} did not start the handshake")
    if message.type is _ERROR:  # a broken frame, or too much before authenticating
        await _close_within(ws)
        raise NotAKernelServer(f"{url} answered, but not as a kernel server (it broke the handshake: "
                               f"{str(message.data)[:200]})")
    if message.type != aiohttp.WSMsgType.TEXT:  # a binary message
        await _close_within(ws)
        raise NotAKernelServer(f"{url} answered, but not as a kernel server (it did not start the handshake: "
                               f"a {message.type.name} message)")
    hello = _handshake_json(message.data)
    peer, their_nonce = hello["process"], hello["nonce"]
    # (said in errors before the server has proved anything: a stranger's text, new
    # lines and terminal escapes in it, went into the dialler's error as it was)
    if not (type(peer) is int and isinstance(their_nonce, str)):
        raise TypeError(f"a hello whose process is a {type(peer).__name__}, its nonce a "
                        f"{type(their_nonce).__name__}")
    nonce = os.urandom(32).hex()
    ours = msgspec.json.encode({"process": process, "nonce": nonce, "meta": meta,
                                "mac": _mac(key, b"client", their_nonce, process),
                                **({} if instance is None else {"instance": instance})})
    if len(ours) > HANDSHAKE_MAX_MESSAGE:  # the server would refuse it at its head
        await _close_within(ws)
        raise LinkError(f"the handshake to {url} would be {len(ours)} bytes (its meta "
                        f"{len(msgspec.json.encode(meta))}), over the {HANDSHAKE_MAX_MESSAGE} bytes a "
                        "server reads before authentication")
    if hello_sent is not None:  # (before sending it: the server may take the link once it has it)
        hello_sent()
    await ws.send_str(ours.decode())
    answer = await ws.receive()
    if answer.type is _ERROR:  # (as the hello's: not a kernel's answer)
        await _close_within(ws)
        raise NotAKernelServer(f"{url} answered, but not as a kernel server (it broke the handshake: "
                               f"{str(answer.data)[:200]})")
    if answer.type != aiohttp.WSMsgType.TEXT:
        await _close_within(ws)
        if ws.close_code == AUTH_FAILED:  # the server's word: our secret is not its
            raise AuthenticationFailed(f"process {peer} at {url}")
        if ws.close_code == UNEXPECTED:  # authenticated, but not taken: final, as a wrong secret
            why = answer.extra if answer.type is aiohttp.WSMsgType.CLOSE and answer.extra else "unexpected"
            why = _printable(str(why))  # (a stranger may close so too)
            raise LinkError(f"process {peer} at {url} refused this process ({process}): {why} there "
                            f"(is --process-id {process} given to two processes, or do the --peers "
                            "lists differ?)")
        # a server going away mid-handshake (reset, or closed with another code): not
        # a wrong secret, which a caller takes as final
        raise LinkRefused(f"{url} broke the handshake (closed, code {ws.close_code}, before answering)")
    reply = _handshake_json(answer.data)
    if not _same_mac(reply.get("mac"), _mac(key, b"server", nonce, peer)):
        await _close_within(ws, AUTH_FAILED, b"authentication failed")
        raise AuthenticationFailed(f"process {peer} at {url}")
    guard = getattr(ws, "guard", None)
    if guard is not None:  # the server is who it says: its frames may be a data frame's size now
        ws.guard = None
        guard.authenticated()
    ws.peer_instance = reply.get("instance")  # (the server's token, where it tells one: `LinkServer.dialled`)
    if check_meta:
        try:
            _check_meta(meta, reply.get("meta"), f"process {peer} at {url}")
        except LinkMismatch:
            await _close_within(ws, MISMATCH, b"incompatible peer")
            raise
    return peer, reply.get("meta")
