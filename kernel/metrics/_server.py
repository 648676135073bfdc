"""The server of a run with `dashboard="HOST:PORT"`: `/metrics` and the dashboard.

The address is checked and its socket bound before anything runs (and
before a launcher forks its kernels), so a bad value or a port in use is an
error at once. One kernel: the server runs on the run's own loop and reads
the runtime at scrape time. Kernel processes: it runs on a thread of the
launcher, with a loop of its own, and reads the kernels' blocks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import threading
import time
from collections import Counter

from kernel.scheduling._errors import KernelError
from kernel.scheduling._host_port import host_port, parse_address  # noqa: F401  (importable here, as they were)
from kernel.scheduling._signal_mask import main_thread_signals

# Seconds aiohttp's shutdown waits for a request still being answered, and
# then again for it once cancelled: a scraper or a page that stopped reading
# holds the run's end up twice this at most (1 s held it 2 s). A client that
# reads gets its answer, or the last event, in well under it.
SHUTDOWN_TIMEOUT = 0.25

# The server is unauthenticated: whoever reaches the port must not take the
# process's descriptors. At most MAX_CONNECTIONS connections are open (a
# page holds two, a scraper one): a new one past that closes an idle one to
# make room (`_close_idlest`), or is closed as soon as it is accepted when
# every one is answering a request; and a connection with no request for
# IDLE_TIMEOUT seconds is closed (a request being answered, such as a page's
# event stream, is not cut). aiohttp keeps an idle connection 3630 s and has
# no cap: with a soft limit of 1,024 descriptors, 3,000 connections that
# sent nothing made a one-kernel run fail ("Too many open files"), and the
# accept loop of a launcher or a coordinator logged a traceback ever faster.
# Refusing the newcomer alone let a stranger holding 64 silent connections
# (re-opened as each was closed) refuse every scrape and page.
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 15.0
# A page's event stream answers its request for as long as it lasts, so
# the cap above never closes it: 64 streams (tabs, or a stranger's) refused
# every scrape. At most this many are open (`_app.EventStreams`: a new one
# past it ends one whose client is gone, else one whose client stopped
# reading, else the newest of the address holding the most), which leaves
# half the connections for scrapes
# and pages.
MAX_EVENT_STREAMS = 32


def _not_a_malformed_request(record: logging.LogRecord) -> bool:
    """aiohttp logs a request it cannot parse (a header too long, a bad
    header line) at ERROR with its traceback: whoever reaches the port could
    fill the run's output. It is answered 400 without a word here; a
    handler's own error is still logged."""
    from aiohttp.http_exceptions import HttpProcessingError

    return not (record.exc_info and isinstance(record.exc_info[1], HttpProcessingError))


_http_logger = logging.getLogger("kernel.metrics.http")  # the server's, instead of aiohttp.server
_http_logger.addFilter(_not_a_malformed_request)


class MetricsServerError(KernelError):
    """The metrics endpoint cannot listen where it was asked to."""


def listen(address: tuple[str, int]) -> socket.socket:
    """A socket listening on `address`; MetricsServerError (saying why) if it cannot."""
    host, port = address
    where = f"dashboard {host_port(host, port)}"
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise MetricsServerError(f"{where}: unknown host ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not a listening port's: see bind
        sock.bind(sockaddr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise MetricsServerError(f"{where}: cannot listen there: {exc.strerror or exc}") from None
    return sock


def bound_address(sock: socket.socket) -> str:
    """The address `sock` listens on, `HOST:PORT` (the port the system
    picked for port 0)."""
    return host_port(*sock.getsockname()[:2])


# Where a run's dashboard listens, said once it listens: the one way to learn
# a port the system picked (`dashboard="127.0.0.1:0"`). The command line
# prints this logger's records on stderr (kernel/cli/_run.py).
_url_log = logging.getLogger("kernel.metrics.url")


def announce(sock: socket.socket) -> str:
    """Say where a run's dashboard is, `sock` listening: its URL
    (`http://127.0.0.1:40123/`, an IPv6 host in brackets), logged at INFO
    by the logger `kernel.metrics.url` as "dashboard on URL", the URL also
    the record's `url` attribute. Returns the URL."""
    url = f"http://{bound_address(sock)}/"
    _url_log.info("dashboard on %s", url, extra={"url": url})
    return url


async def serve_on_loop(sock: socket.socket, collect, describe=None, started: float | None = None,
                        outcome: dict | None = None):
    """Serve `/metrics` and the dashboard (`_app.py`) from `sock` on the
    running loop; `collect()` gives the kernels' snapshots, `describe()`
    the graph (`Graph.describe()`, None while not known yet); `started` the
    run's start (wall seconds, the dashboard's elapsed time; now if not
    given); `outcome` a dict the caller fills with `run_outcome(error)`
    before it stops the server. Returns the
    aiohttp runner (`await runner.cleanup()` stops it, ends the dashboards'
    live streams and closes the socket)."""
    from ._app import dashboard_app  # (aiohttp: only a run with metrics pays for importing it)

    return await start_runner(dashboard_app(collect, describe or (lambda: None), started, outcome), sock)


async def start_runner(app, sock: socket.socket):
    """Serve the aiohttp `app` on `sock` (this server's and the coordinator's
    dashboard): no access log, no log of malformed requests,
    SHUTDOWN_TIMEOUT, IDLE_TIMEOUT and MAX_CONNECTIONS. Returns the runner;
    its `cleanup()` stops it."""
    from aiohttp import web

    idle: dict = {}  # connection -> loop time since which it has answered no request
    app.middlewares.append(_noting_requests(idle))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT,
                           keepalive_timeout=IDLE_TIMEOUT, logger=_http_logger)
    await runner.setup()
    await _capped_site(runner, sock, idle).start()
    return runner


def _noting_requests(idle: dict):
    """A middleware keeping `idle` (connection -> since when it has
    answered no request): a connection is out of it while a handler answers
    on it (a page's event stream for as long as it lasts), back in, as of
    now, once the handler returns."""
    from aiohttp import web

    @web.middleware
    async def note_request(request, handler):
        connection = request.protocol
        idle.pop(connection, None)
        try:
            return await handler(request)
        finally:
            idle[connection] = asyncio.get_running_loop().time()

    return note_request


def _close_idlest(connections: list, idle: dict) -> bool:
    """Make room for a new connection: close the one that has answered no
    request for the longest (one that sent nothing, or part of a request,
    since it connected; a keep-alive one since its last answer), of the
    address holding the most such. False when every connection is
    answering a request. A stranger holding silent connections then gives
    up its own oldest for each newcomer, wherever that comes from; the
    address rule keeps a scraper's kept-alive connection from being the
    one closed while a stranger elsewhere keeps reconnecting."""
    candidates = [c for c in connections
                  if c in idle and c.transport is not None and not c.transport.is_closing()]
    if not candidates:
        return False
    address = {c: (c.transport.get_extra_info("peername") or ("",))[0] for c in candidates}
    held = Counter(address.values())
    victim = min(candidates, key=lambda c: (-held[address[c]], idle[c]))
    del idle[victim]
    victim.transport.abort()
    return True


class _Admission(asyncio.Protocol):
    """A connection accepted: once it is made (its peer known, and every
    connection accepted before it made and counted), `admit()` gives it
    the server's handler, making room past MAX_CONNECTIONS
    (`_close_idlest`), or None, and it is closed at once (every open one
    is answering a request). Decided when the protocol was made, a burst
    of accepts (asyncio makes the protocols of a burst before it connects
    any) saw none of the burst's connections yet: a stranger's 64 at once
    closed a scraper's kept-alive connection, not the stranger's own."""

    __slots__ = ("_admit",)

    def __init__(self, admit) -> None:
        self._admit = admit

    def connection_made(self, transport) -> None:
        handler = self._admit()
        if handler is None:
            transport.abort()
            return
        transport.set_protocol(handler)  # (before any data: reading starts after this call)
        handler.connection_made(transport)


def _capped_site(runner, sock: socket.socket, idle: dict):
    """aiohttp's SockSite on `sock`, but with at most MAX_CONNECTIONS
    connections open (`idle`: see `_noting_requests`, `_close_idlest`).
    aiohttp has no such limit, and its sites take no
    protocol factory: this site's start() is SockSite's with the runner's
    server wrapped. The one private name it uses is BaseSite's `_server`
    (the listening server, which BaseSite.stop() closes when the runner's
    cleanup() stops the site): everything else is its own or public."""
    from aiohttp import web

    class CappedSite(web.BaseSite):
        @property
        def name(self) -> str:
            return f"http://{bound_address(sock)}"

        async def start(self) -> None:
            await super().start()  # registers the site with the runner, which stops it
            server, loop = runner.server, asyncio.get_running_loop()

            def admit():
                """(A connection made: `_Admission`.) Its handler, room made
                for it where the cap is reached; None: refused."""
                connections = server.connections
                for gone in idle.keys() - set(connections):
                    del idle[gone]  # (closed: what `idle` holds stays bounded by the cap)
                # (not those closed: one just closed to make room is still listed a moment)
                open_ = [c for c in connections if c.transport is not None and not c.transport.is_closing()]
                if len(open_) >= MAX_CONNECTIONS and not _close_idlest(open_, idle):
                    return None
                handler = server()
                idle[handler] = loop.time()
                return handler

            self._server = await loop.create_server(lambda: _Admission(admit), sock=sock, backlog=128)

    return CappedSite(runner)


class MetricsServerThread:
    """`/metrics` and the dashboard on a thread of its own (a launcher blocked on its kernels).

    The thread sets its server up only once a client connects: until then it
    waits in `poll` on the listening socket (bound already, so a client
    that comes early waits in its backlog, not refused). Setting up a loop
    and aiohttp's runner took ~8 ms of CPU at every run with a dashboard on
    two kernels where aiohttp was imported already (a 10-record flow: 31.6
    -> 39.2 ms of CPU, kernels included), and ~150 ms where it was not (a
    launcher imports it for this server alone; 0.15 -> 0.3 s of CPU, 0.08 ->
    0.2-0.4 s of wall time, the run's end waiting for the import), while
    the kernels had both CPUs of a 2-core machine; most runs are never
    scraped while they last (Prometheus's usual interval is 15 s). The
    first scrape of a run pays that setup instead, once: ~0.15 s (later
    ones ~1 ms). Setting it up once the run has lasted a few seconds would
    make every run that long pay it, scraped or not."""

    def __init__(self, sock: socket.socket, collect, describe=None) -> None:
        self._sock = sock
        self._collect = collect
        self._describe = describe
        self._started: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._lock = threading.Lock()  # the loop's creation vs stop(): one or the other first
        self._stopping = False
        self._wake_out, self._wake_in = os.pipe()  # stop() wakes a thread still waiting for a client
        self._outcome: dict = {}  # how the run ended, for the dashboard's last state (`stop`)
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)

    def start(self) -> None:
        # the run's start: the server is set up only when a client first comes
        # (a page opened 10 min into a run said it had run 0 s)
        self._started = time.time()
        with main_thread_signals():
            self._thread.start()

    def stop(self, error: BaseException | None = None) -> None:
        """Stop serving; `error`: what ended the run, None when it finished
        (the dashboard's last state says which)."""
        from ._dashboard import run_outcome

        self._outcome.update(run_outcome(error))  # (read by the loop's thread after stop.set, below)
        with self._lock:
            self._stopping = True
            loop, stop = self._loop, self._stop
        if self._thread.is_alive():
            if loop is None:
                os.write(self._wake_in, b"\0")
            else:  # queued even if the loop has not started yet: it stops right after its setup
                try:
                    loop.call_soon_threadsafe(stop.set)
                except RuntimeError:  # its setup failed and the loop has closed meanwhile
                    pass
            self._thread.join()
        self._sock.close()
        os.close(self._wake_out)
        os.close(self._wake_in)

    def _serve(self) -> None:
        waiting = select.poll()  # not select.select: a busy process's descriptors may pass 1023
        waiting.register(self._sock, select.POLLIN)
        waiting.register(self._wake_out, select.POLLIN)
        waiting.poll()
        with self._lock:
            if self._stopping:
                return
            loop = self._loop = asyncio.new_event_loop()
            self._stop = asyncio.Event()
        try:
            loop.run_until_complete(self._main())
        finally:
            loop.close()

    async def _main(self) -> None:
        try:
            runner = await serve_on_loop(self._sock, self._collect, self._describe, self._started,
                                         self._outcome)
        except Exception:  # nothing to tell a caller that has long gone on: say it where it shows
            logging.getLogger("kernel.metrics").exception("the metrics server could not start")
            return
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
