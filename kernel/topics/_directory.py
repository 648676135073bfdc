"""Finding topics: a small client of the coordinator's request protocol
(`kernel.system._wire`: JSON `{"rid", "op", "body"}` requests on a websocket
at /kernel-system, authenticated as a client), for the requests
`topic_publish`, `topic_lookup`, `topic_subscribe` and `topic_unpublish`
(served by `kernel.system._topics`).

The coordinator comes from, in this order: `run(flow, coordinator=...)`
(kept on the flow), `coordinator=` of a services call, the environment
variable KERNEL_COORDINATOR (an executor sets it for the jobs it starts).
The secret is KERNEL_SECRET's. Without a coordinator a topic cannot be
published nor found: a `TopicError` says what is missing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import sys
import uuid

from kernel.topics._errors import TopicError

SYSTEM_PATH = "/kernel-system"  # kernel.system._wire.PATH
CLIENT = 2  # kernel.system._wire.CLIENT: the handshake's role
_MAX_MESSAGE = 1 << 20
log = logging.getLogger("kernel.topics")
# seconds between lookups of a topic that does not exist yet (or whose new
# publisher is awaited): LOOKUP_EVERY after the first, doubling up to
# LOOKUP_MOST (`lookup_pauses`): a topic published soon after is found as
# soon as before, and a subscriber that waits long (for ever, on_lost="wait")
# asks about once a second, not 20 times (each a catalog read)
LOOKUP_EVERY, LOOKUP_MOST = 0.05, 1.0
# seconds a request's answer may take beyond the timeout, at most: the
# coordinator's own work on it (a publish asks an old registration's
# addresses, 1 s at most); the timeout itself where shorter, 2 s at least
ANSWER_GRACE = 5.0
# A request the coordinator refused because its catalog stayed locked by
# another program (a backup, an operator's `sqlite3`) past its
# --catalog-timeout is sent again, every BUSY_EVERY seconds, for up to
# BUSY_WAIT seconds in all: a lock that goes holds up a job's topic (its
# registration, a subscription), it does not end the job.
BUSY_WAIT, BUSY_EVERY = 120.0, 0.1
# A request made for a caller with a deadline (a lookup with a `timeout`: a
# subscriber's, a service client's) waits for the coordinator no longer than
# what is left of it (it waited KERNEL_COORDINATOR_TIMEOUT's 10 s to connect
# to a coordinator that is down: `call(..., timeout=1)` took 10 s), but
# always this long at least (a lookup at its deadline still asks once).
LEAST_TRY = 0.5
# seconds a try to say a registration again on a new connection (`Directory.say_again`)
# takes at most, connecting and answered; tried again after a pause as a waiting lookup's
SAY_AGAIN_TRY = 2.0


def coordinator_address(explicit: str | None = None) -> tuple[str, int]:
    text = explicit or os.environ.get("KERNEL_COORDINATOR")
    if not text:
        raise TopicError("topics and services need a coordinator, and none is known: pass "
                         "run(flow, coordinator='HOST:PORT') (or coordinator= to kernel.services), "
                         "`python -m kernel run ... --coordinator HOST:PORT`, "
                         "set KERNEL_COORDINATOR=HOST:PORT, or submit the job with "
                         "`python -m kernel submit` (its executor sets it)")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TopicError(f"coordinator address {text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def secret() -> bytes:
    value = os.environ.get("KERNEL_SECRET")
    if not value:
        raise TopicError("topics and services need the shared secret: set KERNEL_SECRET "
                         "(the coordinator's)")
    return value.encode(errors="surrogateescape")


_run: tuple[str, str] | None = None  # (publisher id, job name) of this run: new_run()


def new_run() -> None:
    """A run starts (plan_for, in the launcher, before kernel processes fork):
    its publisher id, one for all its kernels and new for every run (an
    executor gives a job's attempt one: KERNEL_RUN), and who it is: the
    system's job id (KERNEL_JOB, set by its executor) or this process (an
    app, a job run by hand)."""
    global _run
    _run = (os.environ.get("KERNEL_RUN") or uuid.uuid4().hex,
            os.environ.get("KERNEL_JOB") or f"app:{socket.gethostname()}:{os.getpid()}")


def job_name() -> str:
    if _run is None:
        new_run()
    return _run[1]


def reader_name() -> str:
    """Who looks a topic up (`topic_lookup`'s `job`): the catalog finds an
    ended topic still, ended, for the readers that had found it
    (`kernel.system._topics`). A job of the system (each attempt alike), or
    one run of an app: an app's next run in the same process is a new
    subscriber, which waits for a publisher (it found the last run's topic
    ended, and ended at once with nothing)."""
    if _run is None:
        new_run()
    publisher, job = _run
    return f"{job}/{publisher}" if job.startswith("app:") else job


def advertised_host() -> str:
    """The host a publisher listens on and gives subscribers: KERNEL_TOPIC_HOST,
    or 127.0.0.1 (one machine; set it to a reachable name on a cluster)."""
    return os.environ.get("KERNEL_TOPIC_HOST") or "127.0.0.1"


async def listen(server) -> None:
    """Start a topic's or a service's server on `advertised_host()`. A host
    it cannot listen on is a TopicError naming KERNEL_TOPIC_HOST (it failed
    with the socket's bare error, "[Errno -2] Name or service not known",
    naming neither the host nor the variable)."""
    try:
        await server.start()
    except OSError as exc:
        await server.stop()  # (its HTTP runner was set up before the listening failed)
        said = os.environ.get("KERNEL_TOPIC_HOST")
        where = f"KERNEL_TOPIC_HOST={said!r}" if said else f"{server.host!r} (KERNEL_TOPIC_HOST's default)"
        raise TopicError(f"cannot listen on {where}: {exc} (KERNEL_TOPIC_HOST must be an address of "
                         "this machine that the subscribers reach)") from exc


async def stop_serving(server, directory: Directory, ended: bool) -> None:
    """A publisher's or a service's end: its server stopped, then its
    connection to the coordinator closed (`ended`: its topic ended and
    unpublished) or abandoned (`Directory.abandon`: the coordinator asks the
    address, no longer served, and takes the registration out). The second
    even where a cancel cuts the first short: a failed run's tasks are
    cancelled, and the loop's end (asyncio.run's) cancels each once more,
    which came while the server waited for a subscriber's close, and the
    connection's aiohttp session was left open ("Unclosed client session"
    after every failed run of a publisher with a subscriber)."""
    try:
        await server.stop()
    finally:
        await (directory.close() if ended else directory.abandon())


def new_id() -> str:
    """This run's publisher id (`new_run`)."""
    if _run is None:
        new_run()
    return _run[0]


def tls():
    """TLS for every topic connection (the coordinator's, the topics', the
    services'): KERNEL_TLS=CERT,KEY[,CA], the links' files (`--tls-cert`,
    `--tls-key`, `--tls-ca`); None (unset): plain websockets."""
    text = os.environ.get("KERNEL_TLS")
    if not text:
        return None
    from kernel.net._relay import TLSFiles

    parts = text.split(",")
    if len(parts) not in (2, 3) or not all(parts):
        raise TopicError(f"KERNEL_TLS={text!r}: expected CERT,KEY or CERT,KEY,CA (paths of PEM files)")
    return TLSFiles(*parts)


def url_of(host: str, port: int) -> str:
    scheme = "https" if os.environ.get("KERNEL_TLS") else "http"
    return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"


def client_ssl():
    """What `connect(..., ssl=)` takes: the client context, or True (plain)."""
    files = tls()
    return files.client_context() if files is not None else True


def server_ssl():
    files = tls()
    return files.server_context() if files is not None else None


# seconds between a running publisher's refreshes of its registration
# (`Directory.keep_registered`)
REFRESH_EVERY = 10.0


def coordinator_heartbeat() -> float:
    """Liveness of a connection to the coordinator, both ends (aiohttp's
    websocket heartbeat: the coordinator's server, `Directory`): a peer
    silent this many seconds is pinged, and the connection ends where no
    pong comes within half as long. So a connection a middlebox drops
    without a FIN or RST (TCP keeps quiet for minutes, for ever where
    nothing is sent) is noticed within 1.5 periods on either side: the
    coordinator forgets what was said on it (`kernel.system._topics`), and
    the client connects again and says its registrations again
    (`Directory.say_again`). KERNEL_COORDINATOR_HEARTBEAT seconds, else
    twice the links' heartbeat (KERNEL_HEARTBEAT, 2.5 s by default: 5 s),
    as a service's connections: a loop blocked for less than one links'
    period is never taken for gone. One ping per period of silence.
    (KERNEL_HEARTBEAT as it is now, as a service's: the README tells a
    kernel that blocks long to set it longer; the links' constant default
    ignored it.)"""
    from kernel.net._environment import MIN_HEARTBEAT, heartbeat_from_environment, seconds_from_environment

    # (at most the largest float: KERNEL_HEARTBEAT=1e308 doubled is inf, which aiohttp's
    # heartbeat cannot schedule, and no connection could be made)
    default = min(2 * heartbeat_from_environment(), sys.float_info.max)
    return seconds_from_environment("KERNEL_COORDINATOR_HEARTBEAT", default, MIN_HEARTBEAT)


def keep_heard(ws, meta) -> asyncio.Task:
    """Ping the coordinator on `ws` every half heartbeat (`_keep_heard`),
    on a task (cancel it once done with the connection): the period is the
    shorter of ours (`coordinator_heartbeat`) and the coordinator's, told in
    `meta`, its handshake's (a coordinator whose own is shorter, its
    KERNEL_COORDINATOR_HEARTBEAT or KERNEL_HEARTBEAT not this process's,
    took a client reading a big reply for gone all the same). Both kinds of
    connection to the coordinator keep it: a command's (`kernel.system.Client`)
    and an app's (`Directory`: a subscriber's lookup of a topic whose record
    type is big, 900 KB through 1 MB/s with a 0.5 s heartbeat, had its
    connection closed by the coordinator, "No PONG received", what it had
    said there forgotten, at every lookup)."""
    from kernel.net._environment import MIN_HEARTBEAT

    period = coordinator_heartbeat()
    theirs = meta.get("heartbeat") if isinstance(meta, dict) else None
    if isinstance(theirs, (int, float)) and not isinstance(theirs, bool) and 0 < theirs < period:
        period = max(float(theirs), MIN_HEARTBEAT)
    return asyncio.ensure_future(_keep_heard(ws, period))


async def _keep_heard(ws, period: float) -> None:
    """A ping every half `period` (the connection's heartbeat), whatever
    comes: the coordinator's heartbeat pings a client it has not heard
    from for a period, and that ping waits behind the reply it is sending
    (in the sockets' buffers too, MBs); a big one on a slow downlink (a
    `logs` of several executors, 1 MiB each) outlasted the pong's half
    period, and the coordinator closed the connection of a client that was
    reading it (a 3 MB reply at 2 MB/s, a 0.5 s heartbeat: "No PONG
    received", the next request ConnectionLost). A client gone stops these,
    and is pinged and dropped as before."""
    import aiohttp

    while not ws.closed:
        await asyncio.sleep(period / 2)
        try:
            # (bounded: a send that waits for room is a connection the heartbeat ends)
            await asyncio.wait_for(ws.ping(), period / 2)
        except (ConnectionError, RuntimeError, TimeoutError, aiohttp.ClientError):
            # (the connection ends: the reader says so. A ping fails only on a
            # closing transport, and waits for room only where 64 KiB of frames
            # went out since aiohttp's last look and the peer reads nothing: a
            # 3 MB request on a command's own connection through 2 MB/s, pings
            # every 0.5 s, failed none, and the connection lived on)
            return


def lookup_pauses():
    """The pauses between a waiting lookup's tries: LOOKUP_EVERY, doubling
    up to LOOKUP_MOST, each drawn from the upper half of its span
    (`kernel.net._links.backoff`: the subscribers of one lost publisher,
    waiting together, ask apart)."""
    from kernel.net._links import backoff

    return backoff(LOOKUP_EVERY, LOOKUP_MOST)


def refused_hint(exc: BaseException, tls_off: str | None = None) -> str:
    """What a client the coordinator refused before any answer should
    check (`LinkRefused`: it said only "could not reach ... Server
    disconnected", as for a coordinator that was not there); "" for another
    error. `tls_off`: the setting that turns TLS on for this client, where
    it is off (the likely cause, said first, and short: an operator's error
    keeps 300 characters of its cause's words). The CLI's words, and a
    topic's or a service's connection's."""
    from kernel.net._links import LinkRefused

    if not isinstance(exc, LinkRefused):
        return ""
    if tls_off is not None:
        return (f" (the coordinator closed the connection before any answer: it may serve TLS, and {tls_off} "
                "is not set here; or be over its limit of connections waiting to authenticate)")
    return (" (the coordinator closed the connection before any answer: it may serve TLS to a client "
            "without it, refuse this client's certificate (not signed by its --tls-ca), or be over its "
            "limit of connections waiting to authenticate)")


class _Closed(Exception):
    """The connection went during a request (`Directory._exchange`)."""


class CoordinatorUnreachable(TopicError):
    """The coordinator did not answer (down, restarting, cut off): not a
    refusal (a wrong secret, another service at its address)."""


class Directory:
    """One connection to the coordinator, one request at a time."""

    def __init__(self, address: tuple[str, int], key: bytes, timeout: float | None = None) -> None:
        # (imported here: a run that uses no topic does not load aiohttp)
        from kernel.net._environment import seconds_from_environment

        self.address, self.key = address, key
        # seconds a request waits for the coordinator: to connect, and for its answer
        self.timeout = seconds_from_environment("KERNEL_COORDINATOR_TIMEOUT", 10.0) if timeout is None \
            else timeout
        self._ws = self._http = None
        self.opened = 0  # connections opened (a request after the last broke opens another)
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        # Between requests a task reads the connection (`_read_idle`): it
        # answers the coordinator's pings (unanswered, the coordinator took
        # an idle connection for gone) and sees the connection end. The
        # requests in `_said` (`say_again`: a publisher's registration, a
        # subscriber's lookup and subscription) are then said again on a
        # new one (`_say_again`), as the coordinator forgot them with it.
        self._idle: asyncio.Task | None = None
        self._heard: asyncio.Task | None = None  # its pings (`keep_heard`), while it is open
        self._said: dict = {}
        self._again: asyncio.Task | None = None
        self._lost = False  # the connection ended with requests to say again

    async def _connect(self, until: float | None = None) -> None:
        from kernel.net._links import AuthenticationFailed, LinkMismatch, connect
        from kernel.net._tls_keys import EncryptedKey

        host, port = self.address
        # (this process's KERNEL_TLS read first, apart: where it is malformed, or names a
        # file missing or not PEM, that is a TopicError, said once; as a coordinator
        # unreachable, a subscriber's lookup without a timeout asked again for ever,
        # silent, and one with a timeout ended "no topic ... was published")
        try:
            context = client_ssl()
        # (ssl.SSLError too: a file that is not a certificate or key; and a key
        # whose passphrase KERNEL_TLS_KEY_PASSPHRASE does not give, which came
        # out of a service call as itself, a ValueError, not a ServiceError)
        except (OSError, EncryptedKey) as exc:
            raise TopicError(f"KERNEL_TLS={os.environ.get('KERNEL_TLS')!r}: {exc}") from exc
        try:
            self._ws, _, meta, self._http = await connect(
                url_of(host, port), self.key, CLIENT, path=SYSTEM_PATH, max_frame=_MAX_MESSAGE,
                timeout=self._bounded(self.timeout, until), meta={"role": "client"}, check_meta=False,
                ssl=context, heartbeat=coordinator_heartbeat())
            self.opened += 1
            self._heard = keep_heard(self._ws, meta)
        except (AuthenticationFailed, LinkMismatch) as exc:
            raise TopicError(f"cannot reach the coordinator at {host}:{port}: {exc}") from exc
        except Exception as exc:
            # (a coordinator that serves TLS, KERNEL_TLS not set here: said as the CLI
            # says it; it said "Server disconnected" and no more)
            hint = refused_hint(exc, None if os.environ.get("KERNEL_TLS") else "KERNEL_TLS")
            raise CoordinatorUnreachable(f"cannot reach the coordinator at {host}:{port}: {exc}{hint}") \
                from exc
        if self._said and asyncio.current_task() is not self._again:
            # A new connection while there is something to say again: the
            # last one ended during a request (its end not seen between
            # requests, by `_read_idle`: a cut noticed by the heartbeat while
            # a request waited, a restart while it was asked), and the
            # coordinator forgot what was said on it (a subscriber's
            # subscription was no longer listed once a request had been
            # asked again on a new connection).
            self._say_again_soon()

    def _say_again_soon(self) -> None:
        """The connection ended (or was found ended) with what `say_again`
        keeps said on it: said again on a new one (`_say_again`), once the
        request under way is done."""
        self._lost = True
        if self._said and (self._again is None or self._again.done()):
            self._again = asyncio.ensure_future(self._say_again())

    def _dropped(self) -> None:
        """This side closed the connection during a request (an answer given
        up on, the connection broken): what it said is said again at once
        on a new one, not at the next request. The coordinator forgets an
        app's subscriptions said on no open connection a period after a
        restart, and a connection closed cleanly (given up on) forgets
        nothing of its own: a live subscriber, which makes no request while
        it reads, was forgotten then until its next one; killed before it,
        without a restart, it stayed listed for good."""
        if self._said and asyncio.current_task() is not self._again:  # (`_say_again` tries again itself)
            self._say_again_soon()

    def _answer_within(self) -> float:
        return self.timeout + max(2.0, min(ANSWER_GRACE, self.timeout))

    @staticmethod
    def _bounded(seconds: float, until: float | None) -> float:
        """`seconds`, or what is left until `until` (the loop's clock) where
        less, LEAST_TRY at least."""
        if until is None:
            return seconds
        return min(seconds, round(max(LEAST_TRY, until - asyncio.get_running_loop().time()), 3))

    async def request(self, op: str, **fields) -> dict:
        """The coordinator's answer to `op`; a refusal is a TopicError. One
        because the catalog was locked (`busy`) is asked again, up to
        BUSY_WAIT seconds: restarting the job instead (a failure classified
        as a loss) would redo its work from its last snapshot, spend one of
        its restarts, meet the same lock again at once, and do nothing for
        an app or `kernel run`, which no job master restarts."""
        return await self._asked(op, fields, None)

    async def _asked(self, op: str, fields: dict, until: float | None, still=None) -> dict:
        """`request`, a busy refusal asked again until `until` at most (the
        loop's clock; None: BUSY_WAIT): a lookup with a timeout (a
        subscriber's, a service client's) gives up by then, not 120 s later.
        `still()`: whether it is still to be asked (`_say_again`'s), read
        before each try; not (`{}`): taken back meanwhile."""
        loop = asyncio.get_running_loop()
        deadline = first = None
        while True:
            if still is not None and not still():
                # (a subscriber's subscription taken back during a busy pause, its
                # unsubscribe done meanwhile: asked again after it, the app was
                # listed for as long as the topic lived. Read with no await before
                # the lock is queued for: a request made after it goes after.)
                return {}
            reply = await self._request(op, fields, until)
            if "error" not in reply:
                if deadline is not None:
                    log.warning("the coordinator at %s:%d did %r once its catalog was unlocked",
                                *self.address, op)
                return reply.get("body") or {}
            if reply.get("busy") is not True:
                raise TopicError(reply["error"])
            if deadline is None:
                first = loop.time()
                deadline = first + BUSY_WAIT if until is None else min(first + BUSY_WAIT, until)
                if deadline > first:
                    log.warning("%s; asking again for up to %.3g s", reply["error"], deadline - first)
            if loop.time() >= deadline:
                again = f" (asked again for {loop.time() - first:.3g} s)" if deadline > first else ""
                raise TopicError(f"{reply['error']}{again}")
            await asyncio.sleep(min(BUSY_EVERY, deadline - loop.time()))

    async def _request(self, op: str, fields: dict, until: float | None = None) -> dict:
        async with self._lock:
            await self._stop_idle()
            try:
                reused = self._ws is not None and not self._ws.closed
                try:
                    reply = await self._exchange(op, fields, until=until)
                except _Closed as closed:
                    if not reused:
                        raise CoordinatorUnreachable(str(closed)) from None
                    # An idle connection may still look open after the
                    # coordinator was restarted (its close not read yet);
                    # the old process took nothing of this request, so it
                    # goes again, once, on a new connection (found by a
                    # review: the next request of every running publisher
                    # and subscriber failed, and ended its job, after a
                    # restart the README says loses nothing).
                    reply = await self._exchange(op, fields, again=True, until=until)
            finally:
                self._start_idle()
        return reply

    def say_again(self, key: str, op: str | None, **fields) -> None:
        """Request `op` (None: none any more) is said again, under `key`,
        whenever the connection it was said on ends between requests (the
        coordinator restarted, or the connection cut: `coordinator_heartbeat`),
        on a new one: the coordinator forgets what a connection said when
        it ends (an app's subscriptions, the readers of a topic after
        READER_GRACE, and which connection a publisher's is)."""
        if op is None:
            self._said.pop(key, None)
        else:
            self._said[key] = (op, fields)

    def _start_idle(self) -> None:
        if self._ws is not None and not self._ws.closed and (self._idle is None or self._idle.done()):
            self._idle = asyncio.ensure_future(self._read_idle(self._ws))

    async def _stop_idle(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None and not idle.done():
            idle.cancel()
            await asyncio.gather(idle, return_exceptions=True)

    async def _read_idle(self, ws) -> None:
        """Read the connection between requests: pings answered (within
        `receive`), a late reply to a request given up on dropped, until
        the connection ends; then what `say_again` keeps is said again."""
        import aiohttp

        ended = None
        try:
            while True:
                message = await ws.receive()
                if message.type.name in ("CLOSE", "CLOSING", "CLOSED", "ERROR"):
                    break
        except (ConnectionError, aiohttp.ClientError) as exc:
            # aiohttp answers a ping within `receive`, and raises where the
            # transport is closing: the coordinator's last ping, read with
            # its close after a SIGSTOP (the connection dropped meanwhile,
            # "No PONG received"), raised ClientConnectionResetError here,
            # "Cannot write to closing transport", out of this task. Nothing
            # was said again then: a resumed publisher stayed out of the
            # catalog until its next refresh (`keep_registered`, 10 s), its
            # subscribers waiting. It is the connection's end, as any other.
            ended = exc
        await ws.close()  # (closed: the next request opens a new connection)
        log.debug("the connection to the coordinator at %s:%d ended (%s)", *self.address,
                  ended or ws.exception() or ws.close_code)
        self._say_again_soon()

    async def _say_again(self) -> None:
        """Say what `say_again` keeps on a new connection, asked again while
        the coordinator cannot be reached (pauses as a waiting lookup's),
        and again should that connection end too meanwhile."""
        pauses = lookup_pauses()
        loop = asyncio.get_running_loop()
        while self._lost and self._said:
            self._lost = False
            try:
                for key in list(self._said):
                    # (what is still to be said, read as each comes: one taken back
                    # meanwhile, a subscriber's as it ends, said after its
                    # unsubscribe, listed it again for good)
                    said = self._said.get(key)
                    if said is None:
                        continue
                    op, fields = said
                    # (each try bounded: a request of the caller's with a deadline
                    # of its own, a lookup's, waits for this one's end)
                    await self._asked(op, fields, loop.time() + SAY_AGAIN_TRY,
                                      still=lambda key=key, said=said: self._said.get(key) is said)
            except TopicError as exc:
                self._lost = True
                log.debug("could not say %s again to the coordinator at %s:%d (%s)", list(self._said),
                          *self.address, exc)
                await asyncio.sleep(next(pauses))
                continue
            log.info("the connection to the coordinator at %s:%d ended: connected again, and said %s "
                     "again", *self.address, " and ".join(self._said))

    async def _exchange(self, op: str, fields: dict, again: bool = False, until: float | None = None) -> dict:
        """`until`: the caller's deadline (None: none), which bounds the
        waits for the connection and the answer (`_bounded`)."""
        import msgspec  # (here: every run names itself, `new_run`; only one with topics talks)

        if self._ws is None or self._ws.closed:
            await self._disconnect()
            await self._connect(until)
        within = self._bounded(self._answer_within(), until)
        number = next(self._ids)
        gone = _Closed(f"the coordinator at {self.address[0]}:{self.address[1]} closed the connection "
                       f"during {op!r}")
        try:
            # ("within": what the coordinator waits for its catalog on it is
            # bounded by our wait: refused busy in time, it is asked again)
            await self._ws.send_str(msgspec.json.encode(
                {"rid": number, "op": op, "body": fields, "within": within}).decode())
            while True:
                # bounded: a coordinator frozen (SIGSTOP, a stalled VM, a cut
                # cable: no close comes) held a topic's end, and its job, for
                # ever
                message = await self._ws.receive(timeout=within)
                if message.type.name != "TEXT":
                    raise gone
                reply = msgspec.json.decode(message.data)
                if reply.get("re") == number:
                    return reply
        except TimeoutError:
            await self._disconnect()
            self._dropped()
            raise CoordinatorUnreachable(f"the coordinator at {self.address[0]}:{self.address[1]} did not "
                                         f"answer {op!r} within {within:g} s") from None
        except (ConnectionError, _Closed):  # (aiohttp's reset on a closing socket is a ConnectionError)
            await self._disconnect()
            self._dropped()
            if again:
                raise CoordinatorUnreachable(str(gone)) from None
            raise gone from None

    async def answered(self, op: str, deadline: float | None, doing: str, **fields) -> dict:
        """`request`, asked again while the coordinator cannot be reached
        (down longer than a dial's timeout: a restart that takes a while),
        until `deadline` (the loop's clock; None: for ever; a refusal
        because the catalog is locked, till then at most), saying so once
        (`doing`: what is asked again), and once that it answers again:
        what may wait goes on waiting rather than ending its job (a review)."""
        loop = asyncio.get_running_loop()
        unreachable = False
        while True:
            try:
                reply = await self._asked(op, fields, deadline)
            except CoordinatorUnreachable as exc:
                # (a try given less than LEAST_TRY would wait LEAST_TRY: past the deadline)
                if deadline is not None and deadline - loop.time() < LEAST_TRY:
                    raise
                if not unreachable:
                    unreachable = True
                    log.warning("%s; %s again until it answers", exc, doing)
                await asyncio.sleep(LOOKUP_EVERY)
                continue
            if unreachable:
                log.warning("the coordinator at %s:%d answers again", *self.address)
            return reply

    async def lookup(self, name: str, timeout: float | None, kind: str = "stream",
                     not_id: str | None = None, waited: float | None = None) -> dict:
        """The topic `name` once it is published whole (every partition),
        waiting up to `timeout` seconds (None: for ever); `not_id`: a
        publisher to wait past (one that was lost) while the catalog still
        lists it; `waited`: the seconds the error names where that is not
        `timeout` (what is left of a caller's own)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        waiting = False
        pauses = lookup_pauses()
        lost = not_id
        while True:
            # (job: a topic that ends is still found, ended, by the jobs that had found it)
            found = await self.answered("topic_lookup", deadline, f"looking {name!r} up", name=name,
                                        job=reader_name())
            if not_id is not None and found.get("id") != not_id:
                # Taken out of the catalog (or replaced): should `not_id` be
                # listed again, it was never gone (stopped, or blocked, past
                # its connection's heartbeat and the coordinator's probes: it
                # says its registration again once it runs), and it is found
                # (it was waited past for ever, its subscribers waiting for
                # a new publisher while it published on).
                not_id = None
            if found.get("found") and found["id"] != not_id:
                if found.get("kind", "stream") != kind:
                    raise TopicError(f"{name!r} is a {found.get('kind')} topic, not a {kind}")
                return found
            if not waiting:
                waiting = True
                log.info("waiting for %s to be published", repr(name) if lost is None else
                         f"{name!r} (a new publisher)")
            if deadline is not None and loop.time() >= deadline:
                what = "service" if kind == "service" else "topic"
                raise TopicError(f"no {what} {name!r} was published within {waited or timeout:g} s "
                                 "(is the publishing job running, with the same coordinator?)")
            pause = next(pauses)
            # (not past the deadline: a last try there, then the error on time)
            await asyncio.sleep(pause if deadline is None else max(0.0, min(pause, deadline - loop.time())))

    async def keep_registered(self, fields: dict, until: asyncio.Future, what: str) -> None:
        """Say a running publisher's registration (`topic_publish`'s
        `fields`) again every KERNEL_TOPIC_REFRESH seconds (REFRESH_EVERY by
        default) until `until` is done. The coordinator ties a registration
        to the connection it came on, and takes it out once that breaks and
        the publisher no longer answers (`kernel.system._topics.forget_lost`):
        a coordinator restarted since has no such connection until a request
        opens one again, and a killed publisher stayed listed; said again,
        it is (within a period). A name another publisher has taken since
        is left to it (said once, in the log)."""
        from kernel.net._environment import seconds_from_environment

        every = seconds_from_environment("KERNEL_TOPIC_REFRESH", REFRESH_EVERY)
        loop = asyncio.get_running_loop()
        # (and at once on a new connection where this one ends: `say_again`)
        self.say_again("its registration", "topic_publish", **fields, refresh=True)
        try:
            await self._keep_registered(fields, until, what, every, loop)
        finally:  # (ended, or its end under way: said again no more)
            self.say_again("its registration", None)

    async def _keep_registered(self, fields: dict, until: asyncio.Future, what: str, every: float,
                               loop) -> None:
        while True:
            asleep = loop.create_future()
            timer = loop.call_later(every, asleep.set_result, None)
            try:
                await asyncio.wait([until, asleep], return_when=asyncio.FIRST_COMPLETED)
            finally:
                timer.cancel()
            if until.done():
                return
            opened = self.opened
            # (raced with `until`: the publisher's end, and its unpublish, do
            # not wait for a coordinator away or a catalog locked meanwhile)
            saying = asyncio.ensure_future(self.request("topic_publish", **fields, refresh=True))
            try:
                await asyncio.wait([until, saying], return_when=asyncio.FIRST_COMPLETED)
            finally:  # (also where the publisher is cancelled: no request left running on its own)
                if not saying.done():
                    saying.cancel()
                    await asyncio.gather(saying, return_exceptions=True)
            if saying.cancelled():
                return
            try:
                reply = saying.result()
            except Exception as exc:  # (a refresh that fails never fails the publisher: the next one may do)
                log.debug("%s: its registration could not be said again (%s)", what, exc)
                continue
            if reply.get("taken"):
                log.warning("%s: the name is published by %s now; this publisher no longer says its "
                            "registration again", what, reply["taken"])
                await until
                return
            if reply.get("again") or self.opened != opened:
                log.info("%s: registered again with the coordinator at %s:%d", what, *self.address)

    async def abandon(self) -> None:
        """Close the connection without a close frame, as a publisher that
        is killed does: one whose run failed (or was cancelled), its topic
        not ended, is gone, and the coordinator, seeing its connection
        break, asks whether it still publishes, and takes it out of the
        catalog where not (`kernel.system._topics.forget_lost`); closed
        with a frame, it stayed listed, its address dead."""
        # Broken at once, before any await: a cancel that came at an await
        # (the loop's end cancels every task once more, `stop_serving`) left
        # the connection to `close`, which closed it with a frame.
        self._said.clear()  # (its registration is not said again on a new connection)
        if self._ws is not None and not self._ws.closed:
            sock = self._ws.get_extra_info("socket")
            if sock is not None:
                try:  # (on a socket of its descriptor: uvloop's stand-in for it has no shutdown())
                    with socket.socket(fileno=os.dup(sock.fileno())) as own:
                        own.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # (gone already)
        await self.close()

    async def close(self) -> None:
        # (each step whatever came of the one before: a cancel cutting one short, the
        # loop's end, left the aiohttp session open: `stop_serving`)
        try:
            await self._quiet()
        finally:
            await self._disconnect()

    async def _quiet(self) -> None:
        """Nothing is said again any more, nor read between requests."""
        self._said.clear()
        again, self._again = self._again, None
        if again is not None and not again.done():
            again.cancel()
            await asyncio.gather(again, return_exceptions=True)
        await self._stop_idle()

    async def _disconnect(self) -> None:
        """The connection closed (a request's next opens another)."""
        ws, self._ws = self._ws, None
        http, self._http = self._http, None
        heard, self._heard = self._heard, None
        if heard is not None:
            heard.cancel()
        try:
            if ws is not None:
                await ws.close()
        finally:
            if http is not None:
                await http.close()
