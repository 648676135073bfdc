"""The system's connections: JSON requests and replies over one
authenticated websocket (`kernel.net._links`: the links' challenge-response
over the shared secret, and their guard against strangers).

Every connection to a coordinator (an executor's, a client's) is a websocket
at PATH that has passed the handshake; after it, each side may send the
other text messages, JSON objects:

* a request `{"rid": N, "op": NAME, "body": {...}}`, answered by one reply
  `{"re": N, "body": {...}}` or `{"re": N, "error": TEXT}` (with `"busy":
  true` where the coordinator's catalog stayed locked by another program:
  the same request sent again may succeed);
* a notice `{"op": NAME, "body": {...}}` (no rid), answered by nothing.

A request may say how long its sender waits for the answer, `"within":
SECONDS`: what the coordinator waits for its catalog on it is bounded by
that (`answer_by`), so it answers (refused: `busy`) before its sender gives
up, rather than working on a request nobody waits for any more (a client
waiting 15 s, the coordinator's --catalog-timeout set to 30).

Requests are served each on a task of its own, so a long one (a client
waiting for its job to end) holds up nothing else on the connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import ssl
import time

import aiohttp
import msgspec

from kernel.net._causes import causes
from kernel.system._limits import LARGEST_INTEGER  # noqa: F401  (importable from here, as it was)

# (a pipeline file's, importable from here as they were: kept where a submit's usage
# errors are found without this module's imports, aiohttp and asyncio)
from kernel.system._pipeline_file import FILE_ROOM, MAX_MESSAGE, file_bytes, file_fields  # noqa: F401

log = logging.getLogger("kernel.system")

PATH = "/kernel-system"
# The handshake's "process" field says who speaks (its MAC covers it).
COORDINATOR, EXECUTOR, CLIENT = 0, 1, 2
ROLES = {EXECUTOR: "executor", CLIENT: "client"}

# A job's states, as the coordinator's replies name them (kernel.system._catalog
# keeps them): here, so that a client (`status`, `wait`) does without the catalog's
# module and sqlite3.
ACTIVE = ("submitted", "starting", "running", "restarting")
TERMINAL = ("completed", "failed", "killed")


class KernelSystemError(Exception):
    """Base of the system's errors."""


class RequestError(KernelSystemError):
    """A request the other side refused, with its reason (`no such job j-9`).
    `busy`: refused because the catalog stayed locked by another program (a
    backup) past --catalog-timeout, or its queue of calls did not reach the
    request in time: nothing of it was done, and the same request sent
    again once the lock goes succeeds."""

    def __init__(self, message: str, *, busy: bool = False) -> None:
        super().__init__(message)
        self.busy = busy


class ConnectionLost(KernelSystemError):
    """The connection closed before the reply came."""


class NoAnswer(ConnectionLost):
    """No reply came within the request's time: the other side is frozen,
    or cut off without a reset (the connection is as good as lost)."""


# The request being served: by when (time.monotonic()) its sender wants the
# answer, less ANSWER_MARGIN for the way back (half its wait where that is
# less); None: it did not say. (Set per request: each is served on a task of
# its own, `Session._serve`.)
answer_by: contextvars.ContextVar[float | None] = contextvars.ContextVar("answer_by", default=None)
ANSWER_MARGIN = 2.0
_YEAR = 365 * 86400.0  # a `within` this long or longer is taken as none


_encode = msgspec.json.encode
_decode = msgspec.json.decode


class Session:
    """One authenticated connection, seen from either end.

    `handler(op, message)` serves the other side's requests and notices
    (a coroutine; a request's reply is what it returns, a dict; raising
    `RequestError` answers with its text)."""

    def __init__(self, ws, handler, name: str) -> None:
        self.ws = ws
        self.handler = handler
        self.name = name  # for logs: "executor e1 at 10.0.0.2"
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()
        self.closed = asyncio.get_running_loop().create_future()
        # (the other end's meta, where it was dialled: the coordinator's says its heartbeat)
        self.peer_meta: dict = {}

    async def request(self, op: str, timeout: float | None = 30.0, **fields) -> dict:
        return await self.ask(op, fields, timeout)

    async def ask(self, op: str, fields: dict, timeout: float | None = 30.0) -> dict:
        """`request` with the request's fields as a dict (one may be named
        `timeout`: a `wait`'s). No reply within `timeout` seconds raises
        TimeoutError."""
        if self.closed.done():
            raise ConnectionLost(f"{self.name}: connection closed")
        number = next(self._ids)
        reply = self._waiting[number] = asyncio.get_running_loop().create_future()
        try:
            # (the send within the time too: a big request, a pipeline file, to
            # a peer that reads nothing more waits for room for ever)
            async with asyncio.timeout(timeout):
                envelope = {"rid": number, "op": op, "body": fields}
                if timeout is not None:
                    envelope["within"] = timeout
                text = _encode(envelope).decode()
                await self.ws.send_str(text)
                answer = await reply
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise ConnectionLost(f"{self.name}: {exc}") from exc
        finally:
            self._waiting.pop(number, None)
            if reply.done() and not reply.cancelled():
                # (failed by `run` as the connection closed while the send was
                # under way: retrieved, or it logs "Future exception was never
                # retrieved" when collected; the send's own error is raised)
                reply.exception()
        if "error" in answer:
            raise RequestError(answer["error"], busy=answer.get("busy") is True)
        return answer.get("body") or {}

    async def notify(self, op: str, **fields) -> None:
        try:
            await self.ws.send_str(_encode({"op": op, "body": fields}).decode())
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            raise ConnectionLost(f"{self.name}: {exc}") from exc

    async def run(self) -> None:
        """Read messages until the connection closes; a malformed one (not a
        JSON object, no op) closes it, logged."""
        try:
            await self._read()
        except (ConnectionError, aiohttp.ClientError) as exc:
            # aiohttp answers a ping within the read (its autoping), and on a
            # server's websocket writes that answer even where the transport is
            # closing: a peer's ping read after its end (a client killed after
            # it pinged, read together) raised ClientConnectionResetError here,
            # "Cannot write to closing transport", out of run(). It is the
            # connection's end, said as any other (its waiters: ConnectionLost).
            log.debug("%s: the connection ended (%s)", self.name, exc)
        finally:
            if not self.closed.done():
                self.closed.set_result(None)
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionLost(f"{self.name}: connection closed"))
            await self.ws.close()

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                if message.type == aiohttp.WSMsgType.ERROR:
                    log.warning("%s: %s; closing the connection", self.name, message.data)
                    break
                continue
            try:
                body = _decode(message.data)
                if not isinstance(body, dict):
                    raise ValueError("not a JSON object")
                if "re" in body:
                    waiter = self._waiting.get(body["re"])
                    if waiter is not None and not waiter.done():
                        waiter.set_result(body)
                    continue
                if not isinstance(body.get("op"), str) or not isinstance(body.get("body", {}), dict):
                    raise ValueError("no op, or a body that is not an object")
            except (msgspec.DecodeError, ValueError, RecursionError) as exc:  # (nested too deep)
                log.warning("%s sent a malformed message (%s); closing the connection", self.name, exc)
                break
            task = asyncio.ensure_future(self._serve(body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, body: dict) -> None:
        number = body.get("rid")
        within = body.get("within")
        # (a number of seconds, and one a float holds: an integer of 400
        # digits, from any peer that passed the handshake, raised
        # OverflowError here and the request was never answered; past a
        # year it bounds nothing, as none given)
        if isinstance(within, (int, float)) and not isinstance(within, bool) and 0 < within < _YEAR:
            answer_by.set(time.monotonic() + max(within / 2, within - ANSWER_MARGIN))
        try:
            answer = await self.handler(body["op"], body.get("body", {}))
            reply = {"body": {} if answer is None else answer}
        except RequestError as exc:
            reply = {"error": str(exc), "busy": True} if exc.busy else {"error": str(exc)}
        except (KeyError, TypeError, ValueError) as exc:  # a request without the fields it needs
            reply = {"error": f"malformed {body['op']!r} request: {type(exc).__name__}: {exc}"}
        except (ConnectionLost, asyncio.CancelledError):
            return
        except Exception as exc:
            log.exception("%s: request %r failed", self.name, body.get("op"))
            reply = {"error": f"internal error: {type(exc).__name__}: {exc}"}
        if number is None:
            return
        try:
            await self.ws.send_str(_encode({"re": number, **reply}).decode())
        except (ConnectionError, RuntimeError):
            pass  # the connection closed meanwhile: run() reports it

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.ws.close()


async def dial(address: tuple[str, int], secret: bytes, role: int, handler, *, tls=None,
               timeout: float = 10.0, name: str = "coordinator",
               retry: bool = True, heartbeat: float | None = None) -> tuple[Session, aiohttp.ClientSession]:
    """Connect to the coordinator at `address` and authenticate (both ways):
    a Session (run its `run()`), and the client session to close after it.
    Retried within `timeout` (`kernel.net._links.connect`), unless `retry`
    is False: one try, the caller's own loop deciding when the next is.
    `heartbeat`: aiohttp's websocket heartbeat (None: none)."""
    from kernel.net._links import connect

    host, port = address
    scheme = "https" if tls is not None else "http"
    url = f"{scheme}://{_url_host(host)}:{port}"
    ws, _, meta, http = await connect(url, secret, role, path=PATH, max_frame=MAX_MESSAGE, timeout=timeout,
                                      ssl=tls.client_context() if tls is not None else True,
                                      meta={"role": ROLES[role]}, check_meta=False, retry=retry,
                                      heartbeat=heartbeat)
    session = Session(ws, handler, f"{name} at {host}:{port}")
    session.peer_meta = meta if isinstance(meta, dict) else {}
    return session, http


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def tls_handshake_failure(exc: BaseException) -> str | None:
    """Why the TLS handshake of a `dial` over TLS failed, when it did: an
    error of the TLS layer (a peer that does not speak TLS), or the
    connection reset or closed during it (a coordinator restarting, or one
    refusing our certificate: TLS gives the client no clearer word for
    that); None when it failed before (nobody listens) or otherwise."""
    for cause in causes(exc):
        if isinstance(cause, (ssl.SSLError, ConnectionResetError, aiohttp.ServerDisconnectedError)):
            return str(cause) or type(cause).__name__
    return None
