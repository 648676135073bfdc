"""`python -m kernel coordinator --listen HOST:PORT [--data DIR]`: the
catalog and the job master behind one authenticated websocket server.

Who may connect: whoever proves the shared secret (the links' handshake,
`kernel.net._links.AuthenticatedServer`, with its guard against strangers).
An executor registers and then keeps its connection (heartbeats, its
processes' exits; the coordinator asks it to start and stop processes and
for their logs); a client sends requests (`_client.py`). Everything else is
refused and logged (`refused a system connection from ...`).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import logging
import math
import os
import sqlite3
from pathlib import Path

from aiohttp import WSCloseCode

from kernel.dataflow._errors import KernelError
from kernel.net._links import AuthenticatedServer
from kernel.system import _topics
from kernel.system._catalog import CATALOG_TIMEOUT, TABLES, TERMINAL, Catalog, CatalogBusy, CatalogError
from kernel.system._logs import LeftLogs
from kernel.system._master import JobMaster
from kernel.system._wire import (
    CLIENT,
    COORDINATOR,
    EXECUTOR,
    LARGEST_INTEGER,
    MAX_MESSAGE,
    PATH,
    ConnectionLost,
    RequestError,
    Session,
    _url_host,
    file_bytes,
)

log = logging.getLogger("kernel.system")


class CoordinatorListenFailed(KernelError):
    """The coordinator cannot listen on its --listen address."""


class DashboardHoldsTheListenPort(CoordinatorListenFailed):
    """The coordinator cannot listen on its --listen address because its own
    dashboard, bound first, holds that port (the command says which two of
    its options ask for it)."""

_MAX_WAIT = 30.0  # seconds a `wait` request is held before the client asks again
_LOGS_TIMEOUT = 10.0  # seconds an executor has to send a piece of a log (a local file's 1 MiB)


class CoordinatorServer(AuthenticatedServer):
    noun = "a system connection"
    path = PATH

    def __init__(self, host: str, port: int, secret: bytes, master: JobMaster, *, ssl_context=None,
                 client_ssl=True) -> None:
        from kernel.topics._directory import coordinator_heartbeat

        # (a connection cut without a FIN or RST, a middlebox's, is noticed
        # within 1.5 periods: its registrations and readers are then handled
        # as a broken connection's, below, where they stayed for good)
        # (its period told in its meta: a client pings at half of it, `keep_heard`)
        period = coordinator_heartbeat()
        super().__init__(host, port, secret, COORDINATOR, max_frame=MAX_MESSAGE, ssl_context=ssl_context,
                         meta={"role": "coordinator", "heartbeat": period}, ws_heartbeat=period)
        self.master = master
        # (an app's topic server asked whether it still publishes: `_topics.probe`)
        self._probe = functools.partial(_topics.probe, secret=secret, ssl=client_ssl)
        self.requests = 0  # served, for the benchmark and the tests
        self._checking: set[asyncio.Task] = set()  # `_topics.forget_lost` of closed connections
        self._published: dict[int, dict] = {}  # each open connection's `published`, by its id()
        self._subscribed: dict[int, set] = {}  # each open connection's `subscribed`, by its id()
        # where client connections read jobs' logs, and the tails of those on executors that left
        self.left_logs = LeftLogs()

    def check_left_behind(self) -> None:
        """(Once listening.) The catalog's registrations asked whether their
        publishers still publish (`_topics.forget_left_behind`): one that
        died while this coordinator was down is tied to no connection. Asked
        a refresh period later (KERNEL_TOPIC_REFRESH, as the publishers'),
        the subscribers waiting for a new publisher noted meanwhile, and
        again each period while some are said on no connection. The apps'
        subscriptions said on no connection by then go
        (`_topics.forget_untied_subscriptions`)."""
        from kernel.net._environment import seconds_from_environment
        from kernel.topics._directory import REFRESH_EVERY

        every = seconds_from_environment("KERNEL_TOPIC_REFRESH", REFRESH_EVERY)
        checking = asyncio.ensure_future(_topics.forget_left_behind(self.master.catalog, self._probe, every,
                                                                    self._tied))
        self._checking.add(checking)
        checking.add_done_callback(self._checking.discard)
        forgetting = asyncio.ensure_future(_topics.forget_untied_subscriptions(
            self.master.catalog, every, lambda: set().union(*self._subscribed.values())))
        self._checking.add(forgetting)
        forgetting.add_done_callback(self._checking.discard)

    def stop_checking(self) -> None:
        """(Stopping.) The checks of publishers still under way end: the
        catalog closes next (a coordinator served in an application's loop
        went on asking a closed catalog for a minute after it stopped)."""
        for checking in list(self._checking):
            checking.cancel()

    def _tied(self) -> set:
        """(name, id) of the registrations said on a connection still open."""
        return set().union(*self._published.values())

    async def _session(self, ws, peer: int, meta, address: str) -> None:
        if peer not in (EXECUTOR, CLIENT):
            log.warning("refused %s from %s: unknown role %r", self.noun, address, peer)
            await ws.close(code=1008, message=b"unknown role")
            return
        state: dict = {"executor": None}
        subscribed: set = set()  # an app's subscriptions made on this connection
        published: dict = {}  # (name, id) -> partitions registered on this connection, not ended
        publishing: set = set()  # the tasks of this connection's registrations under way
        reading = _topics.Reading()  # who looked topics up on this connection
        places = self.left_logs.reader()  # where this connection reads jobs' logs (`_logs`)
        session = Session(ws, None, f"{'executor' if peer == EXECUTOR else 'client'} at {address}")
        session.handler = (lambda op, m: self._executor_request(session, state, op, m)) if peer == EXECUTOR \
            else (lambda op, m: self._client_request(op, m, subscribed, published, publishing, reading,
                                                     places))
        self._published[id(published)] = published
        self._subscribed[id(subscribed)] = subscribed
        try:
            await session.run()
        finally:
            del self._published[id(published)]
            del self._subscribed[id(subscribed)]
            self.left_logs.closed(places)
            if state["executor"] is not None:
                self.master.disconnected(state["executor"], session)
            elif not self.master.closing:  # (its readers forgotten a while after: `_topics.READER_GRACE`)
                _topics.readers_left(self.master.catalog, reading)
            # (a connection the app closed itself, with a close frame, is no sign
            # it is gone: a reader's catalog connection given up on a slow
            # answer; nor is one this coordinator closes as it stops)
            if ws.close_code not in (WSCloseCode.OK, WSCloseCode.GOING_AWAY) and not self.master.closing:
                # (but one said again on another connection open: the app
                # noticed the break first, a cut, and said it again there;
                # it was forgotten, the app reading on unlisted)
                _topics.forget_subscriptions(self.master.catalog,
                                             subscribed.difference(*self._subscribed.values()))
                # and a publisher's may be its end (the app killed, or
                # crashed): each publication not ended is checked, and
                # goes where the publisher is gone (`_topics.forget_lost`), once
                # the registrations still under way are done (one queued on a
                # locked catalog was written after this, and stayed for good)
                if published or publishing:
                    checking = asyncio.ensure_future(_topics.forget_lost(self.master.catalog, published,
                                                                         self._probe, after=set(publishing)))
                    self._checking.add(checking)
                    checking.add_done_callback(self._checking.discard)

    # -- an executor's requests ---------------------------------------------------------

    async def _executor_request(self, session: Session, state: dict, op: str, m: dict):
        master = self.master
        if op == "register":
            executor = master.register(session, await master.own_id(session, m))
            state["executor"] = executor.id
            # (the executor stops its job processes when cut off for most of it: fencing)
            # (`catalog`: job ids are this catalog's; an executor that ran another's
            # jobs puts their logs and directories aside, `ExecutorDaemon._catalog_seen`)
            return {"executor": executor.id, "executor_timeout": master.executor_timeout,
                    "catalog": master.catalog.identity}
        if state["executor"] is None:
            raise RequestError(f"{op} before register")
        master.heard_from(state["executor"])
        if op == "heartbeat":
            return None
        if op in ("exited", "dashboard") and master.foreign(m.get("catalog")):
            # (of another catalog's job process, being stopped: its job-1 is not ours,
            # and its exit restarted our job-1)
            log.info("executor %s: %s of %s attempt %s process %s ignored: another catalog's job",
                     state["executor"], op, m.get("job"), m.get("attempt"), m.get("process"))
            return {}
        if op == "exited":
            away = bool(m.get("cut_off")) and master.cut_off_by_us(state["executor"])  # (a stall's)
            await master.process_exited(m["job"], m["attempt"], m["process"], m["code"], m.get("error"),
                                        coordinator_away=away, on_its_own=m.get("on_its_own") is True)
            return {}
        if op == "dashboard":
            master.dashboard_listening(state["executor"], m["job"], m["attempt"], m["process"], str(m["url"]))
            return {}
        if op == "leaving":
            master.executor_leaving(state["executor"])
            return {}
        if op == "left":
            # (first, still connected: the rest of its logs being followed, served
            # from here once it has gone; then forgotten, with nothing in between)
            try:
                await self.left_logs.fetch(session, state["executor"])
            finally:
                master.executor_left(state["executor"])
            return {}
        raise RequestError(f"unknown request {op!r}")

    # -- a client's requests ------------------------------------------------------------

    async def _client_request(self, op: str, m: dict, subscribed: set | None = None,
                              published: dict | None = None, publishing: set | None = None,
                              reading: _topics.Reading | None = None, places: dict | None = None):
        self.requests += 1
        master = self.master
        if op == "status":
            return master.status()
        if op == "catalog":
            catalog = master.catalog
            try:
                return await catalog.call(lambda: {name: catalog.table(name) for name in TABLES})
            except (CatalogError, sqlite3.Error) as exc:
                raise RequestError(f"the catalog {catalog.path} cannot be read ({exc})") from None
        if op == "submit":
            return {"job": (await self._submit(m)).id}
        if op == "job":
            return master.job_status(str(m.get("job")))
        if op == "wait":
            timeout = m.get("timeout", _MAX_WAIT)
            # (a number, and a finite one: "nan" was taken by float() and the
            # wait then spun the coordinator's CPU for as long as the job ran)
            number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
            if not (number and 0 <= timeout < math.inf):
                raise RequestError("wait: timeout must be a number of seconds >= 0")
            return await self._wait(str(m.get("job")), timeout)
        if op == "kill":
            job = await master.kill(str(m.get("job")))
            return {"job": job.id, "status": job.status}
        if op == "logs":
            # (who reads: two followers of one job on one connection each keep their place, `LeftLogs`)
            follower = m.get("follower")
            if follower is not None and not (isinstance(follower, str) and 0 < len(follower) <= 128):
                raise RequestError("logs: a follower id is a string of 1 to 128 characters")
            return await self._logs(str(m.get("job")), m.get("offsets") or {},
                                    {} if places is None else places, follower)
        if op in _topics.OPS:  # issue 18: jobs publishing streams and services
            # A subscribe is noted before its write, which may wait for the
            # catalog: the connection closing meanwhile (the app killed) then
            # forgets it, its forgetting queued after that write; noted after,
            # it was written once forgotten, the app listed for good. An
            # unsubscribe is noted once done (failed, it is forgotten at close).
            if subscribed is not None and op == "topic_subscribe":
                _topics.note_subscription(subscribed, op, m)
            if publishing is not None and op == "topic_publish":
                # (awaited by `forget_lost` where the connection breaks meanwhile)
                publishing.add(asyncio.current_task())
            try:
                reply = await _topics.request(master.catalog, op, m, self._probe, reading)
            except (CatalogError, sqlite3.Error) as exc:
                # (as submit's and kill's: the catalog and who holds it named, not an
                # "internal error: CatalogBusy" with a traceback in this log)
                # (busy: the client's topics ask again, `Directory.request`: a
                # backup holding the catalog failed the publishing job for good)
                raise RequestError(f"the catalog {master.catalog.path} cannot be used ({exc}): "
                                   f"{op} of topic {m.get('name')!r} was not done",
                                   busy=isinstance(exc, CatalogBusy)) from None
            finally:
                if publishing is not None:
                    publishing.discard(asyncio.current_task())
            if subscribed is not None and op != "topic_subscribe":
                _topics.note_subscription(subscribed, op, m)
            if published is not None:
                _topics.note_publication(published, op, m)
            return reply
        raise RequestError(f"unknown request {op!r}")

    async def _submit(self, m: dict):
        filename, digest = m.get("filename"), m.get("digest")
        try:
            data = file_bytes(m)
        except ValueError:
            data = None
        if not isinstance(filename, str) or data is None or "/" in filename \
                or "\0" in filename or not filename.endswith(".py"):
            raise RequestError("submit: a pipeline file name (NAME.py) and its text are needed")
        if hashlib.sha256(data).hexdigest() != digest:
            raise RequestError("submit: the pipeline's content does not match its hash")
        flow = m.get("flow") or "flow"
        if not isinstance(flow, str) or not flow.isidentifier():
            raise RequestError(f"submit: {flow!r} is not a flow name")
        checks = {"processes": (m.get("processes"), 1, True), "cores": (m.get("cores", 1), 1, False),
                  "max_restarts": (m.get("max_restarts", 3), 0, False)}
        for name, (value, least, optional) in checks.items():
            # (at most SQLite's largest: `--max-restarts 100000000000000000000` was
            # "internal error: OverflowError", with its traceback in this log)
            if (value is None and optional) or (isinstance(value, int) and least <= value <= LARGEST_INTEGER):
                continue
            raise RequestError(f"submit: --{name.replace('_', '-')} must be an integer from {least} to "
                               f"{LARGEST_INTEGER}")
        interval = m.get("epoch_interval")
        if interval is not None and not (isinstance(interval, (int, float)) and interval > 0):
            raise RequestError("submit: --epoch-interval must be a positive number of seconds")
        executors = m.get("executors")
        if executors is not None and not (isinstance(executors, list)
                                          and all(isinstance(e, str) for e in executors)):
            raise RequestError("submit: --executors is a list of executor ids")
        state_dir = m.get("state_dir")
        if state_dir is not None and not isinstance(state_dir, str):
            raise RequestError("submit: --state-dir is a path")
        shared_state = m.get("shared_state", False)
        if not isinstance(shared_state, bool) or (shared_state and state_dir is None):
            raise RequestError("submit: --shared-state-dir is a flag, and needs --state-dir")
        if interval is not None and state_dir is None:  # (each process's `run` would refuse it)
            raise RequestError("submit: --epoch-interval needs --state-dir")
        request = m.get("request")
        if request is not None and not (isinstance(request, str) and 0 < len(request) <= 128):
            raise RequestError("submit: a request id is a string of 1 to 128 characters")
        return await self.master.submit(filename=filename, content=data, digest=digest, flow=flow,
                                  processes=m.get("processes"), cores=m.get("cores", 1), executors=executors,
                                  state_dir=state_dir, epoch_interval=interval,
                                  max_restarts=m.get("max_restarts", 3), shared_state=shared_state,
                                  request=request)

    async def _wait(self, job_id: str, timeout: float) -> dict:
        """The job once it has ended, or as it is after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, _MAX_WAIT)
        while True:
            job = self.master.job_status(job_id)
            left = deadline - loop.time()
            if job["status"] in TERMINAL or left <= 0:
                return job
            await self.master.wait_for_change(left)

    async def _logs(self, job_id: str, offsets: dict, places: dict, follower: str | None = None) -> dict:
        """Each executor's piece of the job's log from its offset in
        `offsets`; `places`: the asking connection's (`LeftLogs.reader`), where
        `follower` (the request's, if any) reads."""
        job = self.master._job(job_id)
        # (read before the logs, and not yet ended while its processes are
        # being stopped: a killed job is so at once, and a `logs --follow`
        # that stopped on it missed their last lines, `interrupted`)
        status = "stopping" if job.id in self.master.ending else job.status
        chunks, gone, asked = {}, [], {}
        wanted = {executor_id: int(offsets.get(executor_id, 0)) for executor_id in job.ran_on}
        for executor_id, offset in wanted.items():
            self.left_logs.asked(places, job_id, executor_id, offset, follower)
            entry = self.master.connected.get(executor_id)
            if entry is None:
                gone.append(executor_id)
                continue
            asked[executor_id] = entry.session.request("logs", timeout=_LOGS_TIMEOUT, job=job_id,
                                                       offset=offset)
        # Asked at once, and an executor that goes away meanwhile (a frozen one
        # is dropped after the executor timeout) or does not answer is
        # unreachable: its ConnectionLost used to end this request with no
        # reply at all (the client waited 60 s, then said "error: "), and the
        # other executors' logs were lost with it.
        replies = await asyncio.gather(*asked.values(), return_exceptions=True)
        for executor_id, reply in zip(asked, replies):
            if isinstance(reply, (ConnectionLost, RequestError, TimeoutError)):
                gone.append(executor_id)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                chunks[executor_id] = reply
        # One that left (or left as it was asked: the request sent after "left"'s
        # answer) is answered from the tail kept of its log as it left, where
        # there is one from the offset asked (`LeftLogs`); else unreachable.
        missing = []
        for executor_id in gone:
            kept = self.left_logs.piece(job_id, executor_id, wanted[executor_id])
            if kept is None:
                missing.append(executor_id)
            else:
                chunks[executor_id] = kept
        return {"chunks": chunks, "unreachable": missing, "status": status}


async def _held_by(page_socket, host: str, port: int) -> bool:
    """Whether the dashboard's socket is what kept the coordinator from
    listening on (host, port): the same port, and free once that socket is
    closed (asyncio's own bind tells, for every address `host` names; the
    same port on another address, `[::1]` beside `127.0.0.1`, is no clash)."""
    if page_socket is None or port == 0 or page_socket.getsockname()[1] != port:
        return False
    page_socket.close()  # (the run fails either way: the dashboard is not served)
    try:
        probe = await asyncio.get_running_loop().create_server(asyncio.Protocol, host, port)
    except OSError:  # another program holds it too
        return False
    probe.close()
    await probe.wait_closed()
    return True


def _dashboard_socket(dashboard: tuple[str, int]):
    from kernel.system._dashboard import dashboard_socket  # (aiohttp: for a coordinator with a dashboard)

    return dashboard_socket(*dashboard)


async def serve(host: str, port: int, secret: bytes, data_dir: str | Path, *, tls=None,
                ready=None, adopt_grace: float = 5.0, executor_timeout: float = 5.0,
                dashboard: tuple[str, int] | None = None, catalog_timeout: float = CATALOG_TIMEOUT) -> None:
    """Run a coordinator until cancelled. `ready(port)` is called once it
    listens; `dashboard` (host, port): serve the system's dashboard there;
    `catalog_timeout`: how long a catalog call waits for a lock another
    program holds on it."""
    page_socket = None
    if dashboard is not None:  # (first: a port taken, a host unknown, is an error before anything listens)
        page_socket = _dashboard_socket(dashboard)
        if dashboard[1] == 0 and page_socket.getsockname()[1] == port:
            # the system picked for it the very port --listen names (one in its ephemeral range): the
            # run failed, the user told to give the dashboard another, HOST:0, which it had. Another
            # is picked once the coordinator listens.
            page_socket.close()
            page_socket = None
    catalog = server = None
    try:
        catalog = Catalog(data_dir, catalog_timeout)
        master = JobMaster(catalog, adopt_grace=adopt_grace, executor_timeout=executor_timeout)
        server = CoordinatorServer(host, port, secret, master,
                                   ssl_context=tls.server_context() if tls is not None else None,
                                   client_ssl=tls.client_context() if tls is not None else True)
        try:
            await server.start()
        except OSError as exc:
            # (a port taken, another coordinator on it; an address not this
            # machine's: it ended with asyncio's traceback, exit 1)
            why = os.strerror(exc.errno) if exc.errno else str(exc)  # (asyncio's text repeats the address)
            if exc.errno == errno.EADDRINUSE and await _held_by(page_socket, host, port):
                # (said as another program's, it sent users looking for one that was not there)
                raise DashboardHoldsTheListenPort(
                    f"the coordinator cannot listen on {_url_host(host)}:{port}: its own dashboard "
                    f"({dashboard[0]}:{dashboard[1]}) listens on that port; give each a port of its own"
                ) from None
            if exc.errno == errno.EADDRINUSE:
                why += " (another coordinator, or another program, listens there)"
            raise CoordinatorListenFailed(f"the coordinator cannot listen on {_url_host(host)}:{port}: "
                                          f"{why}") from None
        if dashboard is not None and page_socket is None:  # (port 0's, given --listen's port above)
            page_socket = _dashboard_socket(dashboard)
    except BaseException:
        if page_socket is not None:
            page_socket.close()
        if server is not None:
            await server.stop()
        if catalog is not None:
            catalog.close()  # (its lock too: a coordinator started again in this process takes it)
        raise
    log.info("coordinator listening on %s:%d (catalog %s)", _url_host(host), server.port, catalog.path)
    server.check_left_behind()
    if ready is not None:
        ready(server.port)
    watcher = asyncio.ensure_future(master.watch())
    page = None
    try:
        if page_socket is not None:
            from kernel.metrics._server import bound_address
            from kernel.system._dashboard import serve_dashboard

            page = await serve_dashboard(page_socket, master.status)  # topics with publishers, subscribers
            # where it listens: port 0's port (it said ':0'), an IPv6 host in brackets
            log.info("coordinator dashboard on http://%s/", bound_address(page_socket))
        master.reconcile()
        await asyncio.Future()
    finally:
        if page is not None:
            await page.cleanup()
        watcher.cancel()
        await master.close()
        await server.stop()
        server.stop_checking()
        catalog.close()
        await master.report_unsaved()
