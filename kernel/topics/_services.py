"""Service topics: `flow.serve(name, handler)` answers requests on the job's
kernel 0; `kernel.services.call` and `kernel.services.connect` call it from
any job or app.

Wire: after the links' handshake (path /kernel-service), binary messages
`<QB` (request id, status) then msgpack: a request (status 0), a reply
(status 0) or an error's text (status 1); a client's CANCEL (status 2, no
body) says it gave a call up, and the server cancels the task awaiting its
reply. Requests are pipelined on one
connection: a client may send many before the first reply; a synchronous
handler answers each as it is read, one that returns an awaitable (a
coroutine function, say) has it awaited per request as a task, and replies
come back as they are ready, matched by id. A request or reply is at most
_MAX_MESSAGE bytes (msgpack): a bigger one is refused by whoever would
send it, and only its call fails. Both ends run a websocket heartbeat
(_HEARTBEAT): a peer gone without a word is dropped within 1.5 heartbeats
of its last.

A job that serves runs until it is killed (its service source never ends);
the service is registered in the coordinator's catalog as a topic of kind
"service".
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import struct
import threading
from collections import deque

import msgspec

from kernel.dataflow._errors import closed_here
from kernel.dataflow._operator import Source
from kernel.scheduling._errors import describe_exception
from kernel.topics import _directory
from kernel.topics._errors import ServiceError, TopicError

log = logging.getLogger("kernel.topics")

SERVICE_PATH = "/kernel-service"
_HEAD = struct.Struct("<QB")
OK, FAILED = 0, 1
CANCEL = 2  # client -> server, no body: the call with this id was given up (its timeout, cancelled)
# awaited replies at once on one connection. A client holds itself to it:
# a call past it waits for a slot (`ServiceClient._slots`) before it is
# sent. The server fails a call past it at once (a client that does not
# hold itself to it), so a client pipelining calls to a handler that does
# not answer cannot grow the server without bound (each waiting call is a task)
_MAX_IN_FLIGHT = 1024
_MAX_MESSAGE = 16 << 20  # bytes of a request or reply, encoded (a message is _HEAD more)
_MAX_FRAME = _MAX_MESSAGE + _HEAD.size  # what each side lets the other send
_SMALL = 16 << 10  # a message this big or smaller, into an empty socket buffer, is sent at once
_REACH_TRY = 1.0  # seconds a client tries the address it looked up before looking the service up again
# What a handler lets through as it is rather than failing its call: a
# Ctrl-C and a cancellation (from outside) are no failure of the handler's,
# as for a step's function (kernel.dataflow._errors.PASSES_THROUGH; a
# handler's KernelError, though, fails its call as any Exception does).
# Whatever else it raises, an Exception or not, fails its call, answered.
_PASSES_THROUGH = (KeyboardInterrupt, asyncio.CancelledError)
_CLOSE_WITHIN = 2.0  # seconds a client's close waits for the server's close frame at most
# Liveness: both ends of a connection run aiohttp's websocket heartbeat:
# after this many seconds without a word from the peer it is pinged, and
# the connection ends where no pong comes within half as long. So a peer
# gone without a reset (its machine gone, a cut cable, a SIGSTOP: no FIN
# nor RST comes, and TCP keeps quiet for minutes) is noticed within 1.5 x
# this of its last word: the server cancels the connection's awaited
# calls, the client fails its waiting calls (those without a timeout too).
# None: twice the links' heartbeat (KERNEL_HEARTBEAT, 2.5 s by default),
# 5 s: a dead peer noticed within 7.5 s, as a link's worst case (three of
# its periods), and a peer's loop blocked (a synchronous handler working)
# for less than one links' period, 2.5 s, never taken for dead (with the
# links' 2.5 s here, a handler working 1.3 s could have its client dropped).
_HEARTBEAT: float | None = None
_ERROR_TEXT = 64 << 10  # characters of a failed call's error text sent at most (it may echo a request)
_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.decode


class Serve(Source):
    def __init__(self, service: str, handler, *, coordinator) -> None:
        if not callable(handler):
            raise TypeError(f"serve({service!r}, handler): the handler must be callable, got {handler!r}")
        self.service = service
        self.handler = handler
        self.coordinator = coordinator
        self.served = 0

    def open(self, context) -> None:
        self._started = False

    def poll(self):
        if self.context.index != 0:
            return False  # the service runs on kernel 0
        if not self._started:
            self._started = True
            self.context.kernel.spawn(self._serve(), name=f"{self.name} server")
        return None

    async def _serve(self) -> None:
        from kernel.net._links import AuthenticatedServer

        address = _directory.coordinator_address(self.coordinator())
        key = _directory.secret()
        uid = _directory.new_id()
        host = _directory.advertised_host()
        serve = self

        class ServiceServer(AuthenticatedServer):
            noun = "a service client"
            path = SERVICE_PATH

            async def _session(self, ws, peer, meta, address):
                await serve._session(ws)

        server = ServiceServer(host, 0, key, 0, max_frame=_MAX_FRAME, ws_heartbeat=_heartbeat(),
                               meta={"service": self.service, "id": uid}, ssl_context=_directory.server_ssl())
        await _directory.listen(server)
        directory = _directory.Directory(address, key)
        try:
            registration = {"name": self.service, "id": uid, "job": _directory.job_name(), "kind": "service",
                            "record_type": None, "partitions": 1, "partition": 0,
                            "address": f"{host}:{server.port}"}
            await directory.request("topic_publish", **registration)
            log.info("service %r served at %s:%d", self.service, host, server.port)
            # until the job is killed, its connection to the coordinator kept:
            # once it breaks (the app killed), the coordinator asks the
            # address whether the service is still served there, and takes it
            # out of the catalog where not (`kernel.system._topics.forget_lost`)
            await directory.keep_registered(registration, asyncio.Future(), f"service {self.service!r}")
        finally:
            # (the job ended, failed or cancelled: the service is gone, and
            # said so as a killed one is, `Directory.abandon`; the server
            # first: no longer served when the coordinator asks)
            await _directory.stop_serving(server, directory, False)

    async def _session(self, ws) -> None:
        running: dict[int, asyncio.Task] = {}  # request id -> its awaited reply's task
        # One reply written at a time, each once the one before has drained
        # (aiohttp waits for room after writing a frame): a client that stops
        # reading holds a reply's worth in the server's buffers, not every
        # awaited reply it asked for (up to _MAX_IN_FLIGHT x 16 MiB)
        sending = asyncio.Lock()

        async def send(message: bytes) -> None:
            async with sending:
                await ws.send_bytes(message)

        try:
            async for message in ws:
                if message.type.name != "BINARY" or len(message.data) < _HEAD.size:
                    break
                rid, status = _HEAD.unpack_from(message.data)
                if status == CANCEL:  # (found by a review: calls given up kept their tasks for ever)
                    task = running.pop(rid, None)
                    if task is not None:
                        task.cancel()
                    continue
                try:
                    request = _decode(memoryview(message.data)[_HEAD.size:])
                except (msgspec.DecodeError, RecursionError) as exc:  # (RecursionError: nested too deep)
                    await send(_HEAD.pack(rid, FAILED) + _encode(f"malformed request: {exc}"))
                    continue
                try:
                    reply = self.handler(request)
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:
                    # a `class Stop(BaseException)` too, and a CancelledError:
                    # a synchronous handler cannot be cancelled from outside,
                    # so one it raises is its own (a cancelled future's
                    # result): this call's failure
                    await send(_failed(rid, exc))
                    continue
                # Whatever returns an awaitable is awaited, not only a coroutine
                # function: an object with `async def __call__`, a lambda that
                # returns a coroutine. Each in a task of its own, so that the
                # requests after it are read (and answered) meanwhile; a
                # synchronous handler's reply goes out at once, no task.
                if inspect.isawaitable(reply):
                    if len(running) >= _MAX_IN_FLIGHT:
                        if inspect.iscoroutine(reply):
                            reply.close()  # (never awaited: not "never awaited" on stderr)
                        await send(_HEAD.pack(rid, FAILED) + _encode(
                            f"{_MAX_IN_FLIGHT} calls already wait for their replies on this connection"))
                        continue
                    task = running[rid] = asyncio.ensure_future(self._answer_later(send, rid, reply))
                    task.add_done_callback(lambda done, rid=rid: running.pop(rid, None))
                else:
                    await send(self._answer(rid, reply))
        except ConnectionError:
            pass  # the client went while a reply was sent: its session ends
        finally:
            # (whichever way it ends: a reply's send that failed left the
            # connection's awaited calls running, for ever where they wait)
            for task in list(running.values()):
                task.cancel()

    def _answer(self, rid: int, reply) -> bytes:
        try:
            answer = _encode(reply)
        except Exception as exc:
            return _failed(rid, exc)
        if len(answer) > _MAX_MESSAGE:
            # Sent, it would break the connection (the client refuses it at
            # its head) and with it every call pipelined there: only this
            # call fails, with what went wrong.
            return _HEAD.pack(rid, FAILED) + _encode(_over_limit("reply", len(answer)))
        self.served += 1
        return _HEAD.pack(rid, OK) + answer

    async def _answer_later(self, send, rid: int, awaitable) -> None:
        if not inspect.iscoroutine(awaitable):
            # A future or task the handler may hand several calls at once (a
            # single flight): a CANCEL of one call cancels this call's wait,
            # not the work the others wait on too (found by the review of the
            # CANCEL: a patient client's call was never answered)
            awaitable = asyncio.shield(awaitable)
        try:
            answer = self._answer(rid, await awaitable)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this call was given up (CANCEL), or its connection ended: nobody to answer
            answer = _failed(rid, exc)  # the handler's own work was cancelled: the call fails, answered
        except KeyboardInterrupt:
            raise
        except GeneratorExit as exc:
            if closed_here(exc):  # this coroutine being closed: nobody to answer
                raise
            answer = _failed(rid, exc)
        except BaseException as exc:  # a `class Stop(BaseException)` too: this call's failure
            answer = _failed(rid, exc)
        try:
            await send(answer)
        except (ConnectionError, RuntimeError):
            pass


def _heartbeat() -> float:
    from kernel.net._environment import heartbeat_from_environment

    return 2 * heartbeat_from_environment() if _HEARTBEAT is None else _HEARTBEAT


def _over_limit(what: str, size: int) -> str:
    return f"a {what} of {size} bytes exceeds the {_MAX_MESSAGE >> 20} MiB limit"


def _failed(rid: int, exc: BaseException) -> bytes:
    text = describe_exception(exc)  # (whatever its __str__ raises)
    if len(text) > _ERROR_TEXT:
        # (an error echoing a big request made a text over the message
        # limit: the client refused the frame, and the connection closed
        # with every call pipelined on it)
        text = f"{text[:_ERROR_TEXT]}... ({len(text) - _ERROR_TEXT} more characters cut)"
    # (a lone surrogate in the text, from bytes decoded with errors="surrogateescape",
    # cannot be encoded as UTF-8: escaped, rather than failing the call or the connection)
    return _HEAD.pack(rid, FAILED) + _encode(text.encode("utf-8", "backslashreplace").decode("utf-8"))


class ServiceClient:
    """One connection to service `name`; `await call(request)` may be
    called many times at once (pipelined)."""

    def __init__(self, name: str, *, coordinator: str | None = None, timeout: float | None = 10.0) -> None:
        self.name = name
        self.coordinator = coordinator
        self.timeout = timeout
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._ws = self._http = self._reader = None
        self._closed: str | None = None  # once the connection has ended: why, if known ("" if not)
        self._deadlines: deque[tuple[float, int]] = deque()  # (when, request id): _expire_at
        self._watchdog: asyncio.TimerHandle | None = None
        self._giving_up: set[asyncio.Task] = set()  # CANCEL messages on their way (`_give_up`)
        # One per call the server may be awaiting, _MAX_IN_FLIGHT in all: taken
        # before a call is sent, given back once its reply (or failure) came,
        # or once the CANCEL of a call given up is written (the server then
        # no longer counts it), or at once where the connection has closed
        self._slots = asyncio.Semaphore(_MAX_IN_FLIGHT)

    async def __aenter__(self) -> ServiceClient:
        """Look the service up and connect. Where the address the catalog
        gave does not answer (its job was killed, and maybe restarted
        elsewhere: a new registration replaces the old one), or answers
        with another service (its port taken since), or refuses this
        client's secret (its port taken since by another system's server),
        the service is looked up again, every _REACH_TRY seconds at most,
        until the timeout. A wrong secret of the client's own is refused
        by the coordinator, at once."""
        from kernel.net._links import AuthenticationFailed, LinkError, LinkMismatch, backoff, connect

        try:
            address = _directory.coordinator_address(self.coordinator)
            key = _directory.secret()
        except TopicError as exc:
            # (no coordinator, no KERNEL_SECRET: the service cannot be reached,
            # as `ServiceError` says; it was a plain TopicError, which
            # `except ServiceError` did not catch)
            raise ServiceError(f"service {self.name!r}: {exc}") from exc
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - loop.time())

        directory = _directory.Directory(address, key)
        refused_pauses = backoff(_directory.LOOKUP_EVERY, _REACH_TRY)
        # (an address serving another service: looked up again, apart, growing, as a
        # waiting lookup is; every 50 ms, a lookup and a handshake each, till the timeout)
        other_pauses = _directory.lookup_pauses()
        try:
            while True:
                try:
                    found = await directory.lookup(self.name, left(), kind="service", waited=self.timeout)
                except TopicError as exc:
                    # (not found in time, a stream's name: the service cannot be
                    # reached, as `ServiceError` says; it was a plain TopicError)
                    raise ServiceError(str(exc)) from exc
                host, _, port = found["addresses"][0].rpartition(":")
                url = _directory.url_of(host, int(port))
                remaining = left()
                try:
                    ws, _, meta, http = await connect(
                        url, key, 0, path=SERVICE_PATH, max_frame=_MAX_FRAME,
                        timeout=_REACH_TRY if remaining is None else max(0.01, min(_REACH_TRY, remaining)),
                        meta={"service": self.name}, check_meta=False, ssl=_directory.client_ssl(),
                        heartbeat=_heartbeat())
                except AuthenticationFailed as exc:
                    # The coordinator took this client's secret (it answered the
                    # lookup), and a service registers with the coordinator's:
                    # an address refusing it serves the service no more (its app
                    # killed, the port another system's since), and a service
                    # restarted elsewhere is found by the next lookup. It was
                    # final, and the restarted service never found.
                    if left() == 0.0:
                        raise ServiceError(f"service {self.name!r}: {host}:{port}, where it is registered, "
                                           f"refused this client's secret for {self.timeout:g} s ({exc})"
                                           ) from exc
                    # (apart, growing: each try is a refusal in that server's log)
                    pause = next(refused_pauses)
                    await asyncio.sleep(pause if deadline is None else min(pause, left()))
                    continue
                except LinkMismatch as exc:
                    raise ServiceError(f"service {self.name!r}: {exc}") from exc
                except LinkError as exc:
                    if left() == 0.0:
                        raise ServiceError(f"service {self.name!r}: nothing answered at {url}, where it is "
                                           f"registered, within {self.timeout:g} s ({exc.__cause__ or exc})"
                                           ) from exc
                    continue  # registered again since, elsewhere? the next lookup says
                if isinstance(meta, dict) and meta.get("service") == self.name:
                    self._ws, self._http = ws, http
                    break
                await ws.close()
                await http.close()
                if left() == 0.0:
                    raise ServiceError(f"service {self.name!r}: {url} serves {meta!r}, not this service")
                pause = next(other_pauses)
                await asyncio.sleep(pause if deadline is None else min(pause, left()))
        finally:
            await directory.close()
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        # Bounded by the client's timeout (2 s at most): a frozen server (or
        # a link dropping packets) sends no close frame, and aiohttp waited
        # 10 s for it: `call(..., timeout=0.5)` then took 10.5 s
        bound = _CLOSE_WITHIN if self.timeout is None else min(self.timeout, _CLOSE_WITHIN)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + bound
        if self._ws is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._ws.close()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=max(0.0, deadline - loop.time()))
            if not self._reader.done():
                self._reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reader
        if self._http is not None:
            await self._http.close()  # (drops the connection, closed or not)

    async def call(self, request):
        """Send `request` (msgspec-encodable) and wait for the reply (as
        msgpack decodes it: dicts, lists, scalars), at most `timeout`
        seconds (None: for ever); a reply that comes later is dropped."""
        if self._ws is None:
            raise ServiceError(f"service {self.name!r}: not connected (use `async with connect(...)`)")
        if self._closed is not None:
            raise ServiceError(f"service {self.name!r}: the connection is closed{self._closed}")
        body = _encode(request)
        if len(body) > _MAX_MESSAGE:
            # Sent, it would break the connection (the server refuses it at
            # its head) and with it every call pipelined there.
            raise ServiceError(f"service {self.name!r}: {_over_limit('request', len(body))}")
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout
        await self._take_slot(deadline)
        rid = next(self._ids)
        future = self._waiting[rid] = loop.create_future()
        message = _HEAD.pack(rid, OK) + body
        try:
            if deadline is not None:
                self._expire_at(deadline, rid)
            try:
                if self._may_wait(message):
                    # (a send that may wait for room in the socket, its peer
                    # not reading: bounded too. aiohttp has written the whole
                    # message out before it waits, so a send cut short here
                    # leaves the connection whole for the other calls)
                    async with asyncio.timeout(self.timeout):
                        await self._ws.send_bytes(message)
                else:
                    await self._ws.send_bytes(message)
            except ConnectionError as exc:  # (aiohttp's ClientConnectionResetError among them)
                raise ServiceError(f"service {self.name!r}: the connection is closed ({exc})") from None
            except TimeoutError:
                raise self._late() from None
            return await future
        finally:
            # (a reply that comes later is dropped.) No longer waiting: `_expire`
            # gave the call up, and its slot is the CANCEL's to give back
            expired = self._waiting.pop(rid, None) is None
            if not future.done() or future.cancelled():  # the caller gave up (cancelled the call)
                self._give_up(rid)
            else:
                future.exception()  # failed while the send failed: not "never retrieved"
                if not expired:
                    self._slots.release()

    async def _take_slot(self, deadline: float | None) -> None:
        """Wait for one of the connection's _MAX_IN_FLIGHT slots, until
        the call's `deadline` (a demanding client's extra calls wait rather
        than fail, and are not sent for the server to refuse)."""
        slots = self._slots
        if not slots.locked():
            await slots.acquire()  # (at once, no suspension: the common case)
            return
        try:
            async with asyncio.timeout_at(deadline):
                await slots.acquire()
        except TimeoutError:
            raise self._late() from None
        # (the connection closed meanwhile, the calls it failed giving back
        # their slots; or the deadline came with the slot: nothing is sent)
        late = deadline is not None and asyncio.get_running_loop().time() >= deadline
        if self._closed is not None or late:
            slots.release()
            if self._closed is not None:
                raise ServiceError(f"service {self.name!r}: the connection is closed{self._closed}")
            raise self._late()

    # A call's wait for its reply is bounded by one timer for the whole
    # client, not one a call (asyncio.timeout cost 3.5 us a call, a quarter
    # of a round trip): `_deadlines` holds the waiting calls in the order
    # they were made, which with one timeout is the order they expire in.

    # (A call that waited for a slot keeps the deadline of when it was made:
    # the slots are taken first come, first served, so the order holds.)

    def _expire_at(self, deadline: float, rid: int) -> None:
        deadlines = self._deadlines
        while deadlines and deadlines[0][1] not in self._waiting:
            deadlines.popleft()  # answered: forgotten here (they are, mostly, in order)
        deadlines.append((deadline, rid))
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_at(deadlines[0][0], self._expire)

    def _expire(self) -> None:
        loop = asyncio.get_running_loop()
        now, deadlines = loop.time(), self._deadlines
        while deadlines and deadlines[0][0] <= now:
            rid = deadlines.popleft()[1]
            future = self._waiting.get(rid)
            if future is not None and not future.done():
                del self._waiting[rid]  # (the call's slot is now its CANCEL's: `call`'s finally)
                self._give_up(rid)  # (first: its CANCEL goes before any call the caller makes next)
                future.set_exception(self._late())
        self._watchdog = loop.call_at(deadlines[0][0], self._expire) if deadlines else None

    def _give_up(self, rid: int) -> None:
        """Tell the server call `rid` needs no reply: it cancels the task
        awaiting it (else a handler that never answers kept one per call
        given up, and the server grew for as long as the connection).
        The call's slot is given back once the CANCEL is written: sooner, a
        call sent in its place could find the server still counting it."""
        if self._ws is None or self._ws.closed or self._closed is not None:
            self._slots.release()
            return
        task = asyncio.ensure_future(self._send_quietly(_HEAD.pack(rid, CANCEL)))
        self._giving_up.add(task)
        task.add_done_callback(self._cancel_written)

    def _cancel_written(self, task: asyncio.Task) -> None:
        self._giving_up.discard(task)
        self._slots.release()

    async def _send_quietly(self, message: bytes) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._ws.send_bytes(message)

    def _late(self) -> ServiceError:
        return ServiceError(f"service {self.name!r} did not answer within {self.timeout:g} s")

    def _may_wait(self, message: bytes) -> bool:
        """Could sending `message` wait for room in the socket? Only where
        it is big or the socket still holds what was written before (the
        peer is not reading); without a timeout the send is not bounded."""
        if self.timeout is None:
            return False
        transport = getattr(getattr(self._ws, "_conn", None), "transport", None)  # (aiohttp's own)
        return transport is None or len(message) > _SMALL or transport.get_write_buffer_size() > 0

    async def _read(self) -> None:
        why = ""
        try:
            async for message in self._ws:
                if message.type.name == "ERROR":  # a message over the limit, a broken frame
                    why = f" ({message.data})"
                    break
                if message.type.name != "BINARY":
                    break
                rid, status = _HEAD.unpack_from(message.data)
                body = _decode(memoryview(message.data)[_HEAD.size:])
                future = self._waiting.get(rid)
                if future is None or future.done():
                    continue
                if status == OK:
                    future.set_result(body)
                else:
                    future.set_exception(ServiceError(f"service {self.name!r} failed: {body}"))
        except Exception as exc:  # pragma: no cover - a broken connection
            why = f" ({exc})"
        finally:  # (also when cancelled: a close that found the server frozen)
            self._closed = why  # (the calls after fail at once, not at their timeout)
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(ServiceError(f"service {self.name!r}: the connection closed{why}"))


def connect(name: str, *, coordinator: str | None = None, timeout: float | None = 10.0) -> ServiceClient:
    """`async with connect(name) as svc: await svc.call(request)`."""
    return ServiceClient(name, coordinator=coordinator, timeout=timeout)


def call(name: str, request, *, coordinator: str | None = None, timeout: float | None = 10.0):
    """Call service `name` once and return its reply (blocking). Inside a
    running event loop (an operator's function, say) the call runs on a
    thread of its own, so it works there too; in async code prefer
    `connect`."""

    async def once():
        async with connect(name, coordinator=coordinator, timeout=timeout) as svc:
            return await svc.call(request)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(once())
    outcome: dict = {}

    def in_thread() -> None:
        try:
            outcome["reply"] = asyncio.run(once())
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=in_thread, name=f"service call {name}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["reply"]


__all__ = ["ServiceClient", "ServiceError", "TopicError", "call", "connect"]
