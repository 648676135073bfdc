"""The client commands: `submit`, `status`, `logs`, `kill` (one
authenticated connection to the coordinator each)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import select
import sys
import threading
import time
from pathlib import Path

import msgspec

from kernel.system._pipeline_file import pipeline_payload, submit_payload  # noqa: F401  (importable here)
from kernel.system._wire import (
    CLIENT,
    TERMINAL,
    ConnectionLost,
    KernelSystemError,
    NoAnswer,
    RequestError,
    _url_host,
    dial,
)

_SUBMIT_TRIES = 3  # a submit (a kill) whose connection is lost is sent again, under its request id
BUSY_EVERY = 0.1  # seconds between the tries of a request refused because the catalog is busy
_LAST_TRY = 0.2  # seconds: a busy request is not asked again with less than this left of its bound
REQUEST_TIMEOUT = 60.0  # seconds a request waits for its answer (a `logs` asks every executor)


def coordinator_timeout() -> float:
    """KERNEL_COORDINATOR_TIMEOUT (10 s by default), as for the topics'
    requests: a `wait` or a followed `logs` hears from the coordinator at
    least this often, and one that says nothing for this long and a grace
    (frozen, or cut off without a reset) is taken as gone; a coordinator
    gone is waited for three times as long (30 s: a restart) before the
    command gives up."""
    from kernel.net._environment import seconds_from_environment

    return seconds_from_environment("KERNEL_COORDINATOR_TIMEOUT", 10.0)


def _grace(timeout: float) -> float:
    return max(2.0, min(5.0, timeout))


def secret_refused(address: tuple[str, int]) -> str:
    """A command's secret refused by the coordinator at `address`, in the
    system's words (the links say "authentication failed with process 0 at
    http://...", a cluster's)."""
    return (f"the coordinator at {_url_host(address[0])}:{address[1]} refused this command's secret "
            "(authentication failed: wrong or missing secret): run it with the system's KERNEL_SECRET "
            "or --secret-file")


class Client:
    def __init__(self, address: tuple[str, int], secret: bytes, tls=None, timeout: float = 2.0,
                 started: float | None = None) -> None:
        self.address, self.secret, self.tls, self.timeout = address, secret, tls, timeout
        # (time.monotonic(), the event loop's clock: the command's start, from
        # which a submit's or a kill's wait is bounded, `_until_done`)
        self.started = time.monotonic() if started is None else started
        self._session = self._http = self._reader = self._heard = None

    async def __aenter__(self) -> Client:
        await self._connect(self.timeout)
        return self

    async def _connect(self, timeout: float) -> None:
        from kernel.topics._directory import coordinator_heartbeat, keep_heard

        # (the heartbeat of the apps' connections to the coordinator: a connection
        # cut without a FIN or RST, a firewall's drop, is noticed within 1.5
        # periods, 7.5 s by default, where a request noticed it only at its own
        # timeout: 60 s for `logs --follow`'s, 15 s for `submit --wait`'s)
        period = coordinator_heartbeat()
        self._session, self._http = await dial(self.address, self.secret, CLIENT, _no_requests,
                                               tls=self.tls, timeout=timeout, heartbeat=period)
        self._reader = asyncio.ensure_future(self._session.run())
        self._heard = keep_heard(self._session.ws, self._session.peer_meta)

    async def reconnect(self, timeout: float, following: str | None = None) -> None:
        """Connect again within `timeout` seconds; failing that, while
        `following` a job, an error that says the job was left as it was."""
        from kernel.net._links import AuthenticationFailed, LinkError

        await self.__aexit__()
        try:
            await self._connect(timeout)
        except LinkError as exc:
            if following is None:
                raise
            # (a coordinator restarted with another secret: said in the system's
            # words, not the links', "authentication failed with process 0 at ...")
            why = secret_refused(self.address) if isinstance(exc, AuthenticationFailed) else exc
            raise KernelSystemError(f"gave up following {following} (it may still be running): {why}") \
                from exc

    async def __aexit__(self, *exc) -> None:
        self._heard.cancel()
        await self._session.close()
        await asyncio.wait([self._reader, self._heard], timeout=2)
        await self._http.close()

    async def request(self, op: str, timeout: float | None = REQUEST_TIMEOUT, **fields) -> dict:
        return await self.ask(op, fields, timeout)

    async def ask(self, op: str, fields: dict, timeout: float | None = REQUEST_TIMEOUT) -> dict:
        """`request` with its fields as a dict (a `wait`'s own `timeout`, the
        seconds the coordinator holds it before answering with the job as it
        is). No answer within `timeout` seconds raises NoAnswer (a
        ConnectionLost: reconnect to go on)."""
        host, port = self.address
        try:
            if len(msgspec.json.encode(fields)) > BIG_REQUEST:
                return await self._ask_apart(op, fields, timeout)
            return await self._session.ask(op, fields, timeout)
        except TimeoutError:
            raise NoAnswer(f"the coordinator at {host}:{port} did not answer {op!r} within {timeout:g} s "
                           "(frozen, or cut off)") from None
        except ConnectionLost as lost:
            import aiohttp

            if not isinstance(self._session.ws.exception(), aiohttp.ServerTimeoutError):
                raise
            # (the heartbeat's pong did not come: said as a request's answer that
            # does not come is, not "connection closed")
            raise NoAnswer(f"the coordinator at {host}:{port} did not answer the connection's heartbeat "
                           f"during {op!r} (frozen, or cut off)") from lost


    async def _ask_apart(self, op: str, fields: dict, timeout: float | None) -> dict:
        """A big request (a pipeline file: up to MAX_MESSAGE) asked on a
        connection of its own, without a heartbeat, its own timeout bounding
        it: nothing comes back while it goes out on a slow link, and a ping
        sent on its connection waited behind it (in the sockets' buffers
        too, MBs: its send done is no sign it is out), its pong late, and the
        connection was ended (a 3 MB request at 2 MB/s, a 0.5 s heartbeat:
        "did not answer the connection's heartbeat" after 0.75 s). The
        command's own connection keeps its heartbeat, idle meanwhile. (It
        was paused for such a request through aiohttp's private members.)"""
        from kernel.net._links import LinkError

        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            session, http = await dial(self.address, self.secret, CLIENT, _no_requests, tls=self.tls,
                                       timeout=self.timeout if deadline is None else
                                       max(0.05, min(self.timeout, deadline - loop.time())))
        except LinkError:
            # (not let in: every handshake slot held by this address's connections,
            # a stranger's silent ones (MAX_PENDING, `_make_room_for`): asked on the
            # command's own connection, as before, not failed as a connection lost,
            # where the command, connected, had its answer; a coordinator gone
            # meanwhile is a connection lost there, `_until_done` connects again)
            left = None if deadline is None else max(0.05, deadline - loop.time())
            return await self._session.ask(op, fields, left)
        reader = asyncio.ensure_future(session.run())
        try:
            left = None if deadline is None else max(0.05, deadline - loop.time())
            return await session.ask(op, fields, left)
        finally:
            await session.close()
            await asyncio.wait([reader], timeout=2)
            await http.close()


# bytes of a request's JSON past which it is asked on a connection of its own (`Client._ask_apart`)
BIG_REQUEST = 1 << 16


async def _no_requests(op, message):
    return None


async def submit(client: Client, target: str, *, processes, cores, executors, state_dir, epoch_interval,
                 max_restarts, wait: bool, shared_state: bool = False, payload: dict | None = None) -> int:
    """`payload`: `submit_payload`'s, where the caller checked already."""
    if payload is None:
        payload = submit_payload(target, state_dir=state_dir, epoch_interval=epoch_interval,
                                 shared_state=shared_state)
    if state_dir is not None:
        state_dir = str(Path(state_dir).absolute())  # a path on the executors' machines
    fields = dict(payload, processes=processes, cores=cores, executors=executors, state_dir=state_dir,
                  epoch_interval=epoch_interval, max_restarts=max_restarts, shared_state=shared_state,
                  request=secrets.token_hex(16))
    # (sent again, after a busy refusal or a lost connection, under the same
    # request id: the coordinator answers with the job the first try made,
    # if it made one, never a second)
    reply = await _until_done(client, "submit", fields)
    job = reply["job"]
    print(job, flush=True)  # the first line: what scripts read
    if not wait:
        return 0
    state = await wait_for(client, job)
    message = f": {state['message']}" if state.get("message") and state["status"] != "completed" else ""
    print(f"{job} {state['status']}{message}", flush=True)
    return 0 if state["status"] == "completed" else 1


async def _until_done(client: Client, op: str, fields: dict, again=None) -> dict:
    """`op`'s answer. Refused because the coordinator's catalog is busy
    (locked by another program, a backup; `RequestError.busy`: nothing of
    it was done), asked again every BUSY_EVERY s, saying once on stderr
    that it waits, and on whom (it failed at once, while the topics' client
    waited). Its connection lost (a coordinator restarted, meanwhile too),
    reconnected to and sent again, up to _SUBMIT_TRIES times in all;
    `again()`, awaited first, returns what the first try did where it
    answers for it (None: send it again). All of it within REQUEST_TIMEOUT
    s of the command's start (`client.started`): each try's wait, the
    coordinator's hold of a busy one (it answers within the wait it is
    told) and the reconnections (the retries were counted from the first
    busy refusal, after a first try held for the coordinator's
    --catalog-timeout: ~70 s)."""
    loop = asyncio.get_running_loop()
    deadline = client.started + REQUEST_TIMEOUT
    first, lost, busy = None, 0, None
    while True:
        try:
            return await client.ask(op, fields, max(0.05, deadline - loop.time()))
        except NoAnswer as exc:  # (by the deadline; after busy refusals, the last of them said)
            # (before it: the connection's heartbeat unanswered, a connection lost
            # as any other, reconnected to; it ended a submit refused busy once
            # with that refusal, "waited 1.5 s in all", the lock gone meanwhile)
            if busy is not None and deadline - loop.time() < _LAST_TRY:
                raise _gave_up(busy, loop.time() - client.started) from None
            lost, error = lost + 1, exc
        except ConnectionLost as exc:
            lost, error = lost + 1, exc
        except RequestError as exc:
            if not exc.busy:
                raise
            now, busy = loop.time(), exc
            if first is None:
                first = now
                print(f"waiting for the coordinator's catalog ({_why_busy(exc)}); asking again until "
                      f"{REQUEST_TIMEOUT:g} s from the command's start", file=sys.stderr, flush=True)
            left = deadline - now
            if left < _LAST_TRY:  # (a try that short is refused or unanswered)
                raise _gave_up(exc, now - client.started) from None
            await asyncio.sleep(min(BUSY_EVERY, left - _LAST_TRY))
            continue
        # The connection lost: the request may have been done with its reply
        # lost. `again`, or the coordinator's own check of the request id,
        # finds that (a retry by hand submitted a second job). A connection
        # lost in `again` too (a second restart) is reconnected to as well
        # (it ended the command: "connection closed").
        while True:
            left = deadline - loop.time()
            if lost >= _SUBMIT_TRIES or left <= 0:
                raise error
            await client.reconnect(min(3 * coordinator_timeout(), left))
            try:
                done = None if again is None else await again()
            except ConnectionLost as exc:
                lost, error = lost + 1, exc
                continue
            break
        if done is not None:
            return done


def _gave_up(refused: RequestError, waited: float) -> RequestError:
    """The last busy refusal, saying the time waited in all, not the last
    try's ("has held it for more than 0.5 s")."""
    text = re.sub(r" for more than [\d.]+ s( \(as long as the request's sender waits for its answer\))?",
                  "", str(refused), count=1)
    return RequestError(f"{text} (waited {waited:.3g} s in all)", busy=True)


def _why_busy(refused: RequestError) -> str:
    """The catalog's own words in a busy refusal ("database is locked: pid N
    (sqlite3) has held it for more than 10 s"), else the refusal's."""
    text = str(refused)
    for words in ("(database is locked: ", "(the catalog is busy: "):
        start = text.find(words)
        end = text.rfind("): ")
        if start >= 0 and end > start:
            return text[start + 1:end]
    return text


async def wait_for(client: Client, job: str) -> dict:
    """The job once it has ended. A coordinator that goes away meanwhile
    (restarted), or says nothing for longer than it should (frozen: it was
    waited for with no end), is reconnected to, for up to three
    `coordinator_timeout()`s."""
    timeout = coordinator_timeout()
    loop = asyncio.get_running_loop()
    heard = loop.time()  # the coordinator's last answer: three timeouts of silence in all, then give up
    while True:
        try:
            state = await client.ask("wait", {"job": job, "timeout": timeout}, timeout + _grace(timeout))
        except ConnectionLost as exc:
            # (a coordinator that takes connections but answers nothing was
            # reconnected to for ever: the three timeouts are for all tries)
            left = heard + 3 * timeout + _grace(timeout) - loop.time()
            if left <= 0:
                raise KernelSystemError(f"gave up following {job} (it may still be running): {exc}") \
                    from exc
            await client.reconnect(left, following=job)
            continue
        heard = loop.time()
        if state["status"] in TERMINAL:
            return state


async def status(client: Client, as_json: bool) -> int:
    """Printed as `logs` prints (`_printed`): held by a slow reader
    (`status --json | less`, thousands of jobs) on the loop, the command
    answered no ping, and the coordinator logged "No PONG received" and
    closed the connection of a command that was fine."""
    state = await client.request("status")
    if as_json:
        await _printed(json.dumps(state, indent=2) + "\n")
        return 0
    lines = ["executors:\n"]
    _table(lines, ["ID", "HOST", "CORES", "FREE", "STATE"],
           [[e["id"], e["host"], e["cores"], e["free"], e["state"]] for e in state["executors"]])
    lines.append("jobs:\n")
    _table(lines, ["ID", "NAME", "STATUS", "PLACEMENT", "RESTARTS", "STARTED", "MESSAGE"],
           [[j["id"], j["name"], j["status"], ",".join(j["placement"]) or "-", j["restarts"],
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j["started"])) if j["started"] else "-",
             (j["message"] or "")[:200]] for j in state["jobs"]])
    lines.append("topics:\n")
    _table(lines, ["NAME", "KIND", "JOB", "PUBLISHER", "SUBSCRIBERS"],
           [[t["name"], t.get("kind", "stream"), t["job"], ",".join(t.get("publisher", ())) or "-",
             ",".join(t.get("subscribers", ())) or "-"] for t in state["topics"]])
    await _printed("".join(lines))
    return 0


def _table(lines: list[str], header: list[str], rows: list[list]) -> None:
    """`rows` under `header`, each cell as wide as its column's widest, added to `lines`."""
    if not rows:
        lines.append("  (none)\n")
        return
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() + "\n")


async def logs(client: Client, job: str, follow: bool) -> int:
    offsets: dict[str, int] = {}
    # (this command's own, on every request: where it reads is kept as its own, not
    # another follower's on the connection, as an executor leaves: `LeftLogs`)
    follower = secrets.token_hex(8)
    # Several executors' logs are printed line by line, each line prefixed
    # with its executor: the end of a piece that is not a whole line waits for
    # the rest (a piece ends at 1 MiB, or where the job was writing). It was
    # prefixed as it came: the next executor's line went on after it, and
    # its rest came out on a line of its own.
    partial: dict[str, str] = {}
    several = False
    while True:
        try:
            reply = await client.request("logs", job=job, offsets=offsets, follower=follower)
        except ConnectionLost:
            if not follow:
                raise
            # a coordinator restarted while we follow (it adopts the running
            # job): go on from where we are, as `submit --wait` does (it
            # ended the command with "error: ... connection closed"); a
            # frozen one is given up on (`error: ... did not answer`)
            await client.reconnect(3 * coordinator_timeout(), following=job)
            continue
        chunks = reply["chunks"]
        # Once prefixed, always: a reply holds only the executors that
        # answered, and one that goes (frozen, dropped) left one piece; taken
        # for a one-executor log, it was printed as it came, the start of a
        # line held for the rest came out at the end and its rest alone.
        several = several or len(chunks) > 1
        texts = []
        for executor, chunk in sorted(chunks.items()):
            offsets[executor] = chunk["offset"]
            text = chunk["text"]
            if several and text:
                whole, cut, rest = (partial.pop(executor, "") + text).rpartition("\n")
                partial[executor] = rest
                text = "".join(f"[{executor}] {line}" for line in (whole + cut).splitlines(keepends=True))
            texts.append(text)
        await _printed("".join(texts))
        got_more = any(chunk["text"] for chunk in chunks.values())
        # (an executor sends up to 1 MiB a request: without --follow, ask
        # until they have sent all they have; it stopped after the first
        # MiB, a longer log cut mid-line with no word)
        if not got_more and (not follow or reply["status"] in TERMINAL):
            # (a last line without its newline)
            await _printed("".join(f"[{executor}] {rest}\n" for executor, rest in sorted(partial.items())
                                   if rest))
            if reply["unreachable"]:
                print(f"(logs on executor(s) {', '.join(reply['unreachable'])} are unreachable)",
                      file=sys.stderr)
            return 0
        if not got_more:
            await asyncio.sleep(0.2)


async def _printed(text: str) -> None:
    """`text` on stdout, flushed, by a thread: a reader that takes it slowly
    (a pager read page by page, a slow pipe) holds the write for as long as
    it likes, and the loop, held in it, neither pinged (`keep_heard`) nor
    answered the coordinator's heartbeat, which closed the connection of a
    command still printing; its next request ended it (`logs JOB | less`,
    the first page read for 9 s: 1 MiB of a 3 MB log, then "error: ...
    connection closed", exit 1). A daemon thread writing to the descriptor
    itself, not holding stdout's buffer: Ctrl-C meanwhile ends the command
    at once, "interrupted", 130 (the default executor's thread was waited
    for at its end, and its buffer's lock at the exit's flush: the command
    ignored Ctrl-C until the pager was quit). No stdout (closed): nothing,
    as print()."""
    out = sys.stdout
    if not text or out is None:
        return
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # (not a file's: a StringIO, written at once)
        out.write(text)
        out.flush()
        return
    data = text.encode(out.encoding, out.errors)
    out.flush()  # (what was printed before it comes first)
    loop = asyncio.get_running_loop()
    written = loop.create_future()

    def write() -> None:
        error = None
        try:
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(fd, view):]
                except BlockingIOError:
                    # (a stdout its parent made non-blocking, O_NONBLOCK, read slowly:
                    # the command ended with a traceback once the pipe was full, 64 KiB
                    # of a 3 MB log written; it waits for room, as a blocking one does)
                    select.select([], [fd], [])
        except OSError as exc:  # (said where it is awaited: a reader gone, BrokenPipeError)
            error = exc
        try:
            loop.call_soon_threadsafe(_settle, written, error)
        except RuntimeError:  # (the loop closed: the command ended meanwhile, Ctrl-C)
            pass

    threading.Thread(target=write, name="stdout", daemon=True).start()
    await written


def _settle(future: asyncio.Future, error: OSError | None) -> None:
    if future.done():  # (cancelled: Ctrl-C)
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)


async def kill(client: Client, job: str) -> int:
    async def again():  # (after a lost connection: the first try may have killed it)
        left = client.started + REQUEST_TIMEOUT - time.monotonic()  # (within the command's bound)
        state = await client.request("job", timeout=max(0.05, left), job=job)
        return {"job": state["id"], "status": state["status"]} if state["status"] == "killed" else None

    reply = await _until_done(client, "kill", {"job": job}, again)
    print(f"{reply['job']} {reply['status']}")
    return 0
