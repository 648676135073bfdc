"""Redis Streams: `from_redis_stream` (a source) and `to_redis_stream` (a sink).

Both talk to Redis with redis-py's asyncio client on the kernel's own loop
(the optional extra `streamkernel[redis]`), in batches: the source reads
with `XREAD ... COUNT` (each stream's share of `batch_size`) on a reader
task that fills a buffer and wakes the source; the sink's writer task sends
`XADD`s in pipelines of `batch_size`. Nothing on the data path awaits per record.

Sharing over kernels. A Redis stream is one ordered log with no partitions,
so the unit of parallelism is the stream: with several streams, kernel `i` of
`n` reads `streams[i::n]` (shard a topic over `orders:0 .. orders:7`, the
usual Redis practice, for parallel reading). A single stream is read by
kernel 0 alone; the other kernels end their share at once, and a `key_by`
downstream spreads the records over every kernel. (Reading one stream on
every kernel and keeping every n-th entry would move the whole stream n
times; consumer groups hand entries out first-come, which no snapshot can
replay.)

Positions. An entry id (`1700000000000-0`) orders a stream, so the position
in each stream is the id of the last entry handed on; `XREAD` from it gives
the entries after it. Snapshots hold those ids, so a resumed run goes on
after the last entry of the last complete epoch: with `to_files`, every entry
exactly once. A bounded read (`follow=False`) ends at the entry that was last
in each stream when the run started; that end is in the snapshot too, so a
resumed run finishes the same read, not a longer one. A kernel that had
read its share to the end resumes as ended, its snapshot silent; a stream
added since that lands there makes every kernel restore from all the
snapshots, as on another number of kernels (`cut_on_resume`, `rescale`).
Ended on every kernel, its end has reached every step after it: a stream
added since cannot be read, and the run is refused (the old list is the
one the run that wrote the snapshots recorded in the store).

The sink is at least once: an epoch's snapshot holds the entries handed to
the writer and not yet acknowledged by Redis (buffered or in flight), and a
resumed run sends them again first; entries acknowledged meanwhile then come
twice. Redis assigns the ids (`*`). At most four batches wait for Redis:
beyond that the sink pauses the kernel's input (`pause_input`) until its
writer has caught up.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, NamedTuple

from kernel.dataflow._errors import KernelError, OperatorError, describe_record
from kernel.dataflow._operator import DEFAULT_BATCH_SIZE, Operator, Source

from ._sources import check_batch_size

# What XADD takes as a field or a value (redis-py's encoder refuses the rest:
# a bool, None, a list...): exact types, so a bool never passes as an int.
_ENCODABLE = frozenset((str, bytes, int, float))

_MAXLEN_MAX = 2**63 - 1

INSTALL_HINT = "the Redis connector needs redis-py: pip install 'streamkernel[redis]'"


class RedisEntry(NamedTuple):
    """A stream entry as `from_redis_stream` emits it: the stream's name, the
    entry id (`"1700000000000-0"`) and its fields (str, or bytes with
    `decode=False`). `json.dumps` writes it as `[stream, id, fields]`."""

    stream: str
    id: str
    fields: dict

    @property
    def time(self) -> float:
        """When Redis added the entry (seconds since the epoch): the id's
        first part. `timestamp=lambda e: e.time` gives event time."""
        return int(self.id.partition("-")[0]) / 1000.0


def _redis_asyncio():
    try:
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - the dev extra installs it
        raise KernelError(INSTALL_HINT) from exc
    return redis.asyncio


def check_redis_installed() -> None:
    """At build time: a flow that uses Redis without redis-py fails at once."""
    _redis_asyncio()


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _as_str(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Each key's last entry id ("" for none), in one script: at one moment (an
# entry added between two looks was read by a bounded run from "$"), and
# without the entries' fields (a last entry that is not UTF-8 failed a
# decode=True run that never read it; a huge one came whole for its id).
_LAST_IDS = """
local ids = {}
for i, key in ipairs(KEYS) do
  local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if last[1] then ids[i] = last[1][1] else ids[i] = '' end
end
return ids
"""


def _raise_if_cancelled() -> None:
    """Raise CancelledError where this task was cancelled and went on. A run
    on several kernels whose kernel 0 failed while its reader's XREAD was
    under way hung, at times, at its end: the reader, cancelled (twice: its
    `cancelling()` said 2), got the XREAD's reply all the same (the
    cancellation lost on the way, within redis-py), buffered it and waited
    for space no poll would make, and the kernel's loop waited for the
    reader."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _by_stream(reply) -> list:
    """An XREAD reply as `[(stream, entries)]`. Over RESP3 (a URL with
    `?protocol=3`) redis-py gives `{stream: [entries]}` instead (a map, each
    stream's entries in a list of their own), which the reader took for
    pairs and failed on ('not enough values to unpack')."""
    if not isinstance(reply, dict):
        return reply
    return [(stream, entries[0] if entries and isinstance(entries[0], list) else entries)
            for stream, entries in reply.items()]


def _no_scripts(exc: Exception) -> bool:
    """Whether Redis refused EVAL itself (an ACL without it: NOPERM; a
    server built or configured without scripting), not the script's work."""
    text = str(exc).lower()
    refused = text.startswith("noperm") or type(exc).__name__ == "NoPermissionError"
    return (refused and "eval" in text) or "unknown command" in text or "scripting" in text


def _streams(stream) -> list[str]:
    try:
        names = [stream] if isinstance(stream, str) else list(stream)
    except TypeError:
        names = []
    if not names or not all(isinstance(s, str) and s for s in names):
        raise ValueError(f"from_redis_stream needs a stream name or a list of them, got {stream!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"from_redis_stream: a stream is named twice in {names!r}")
    return names


def _masked(url: str) -> tuple[str, list[str]]:
    """The URL with its passwords masked (`redis://user:***@host`,
    `?password=***`), and the passwords. Cut by hand, not by urlsplit: a
    password written with a "#", "/" or "?" as it is (not %-encoded) ended
    the user part early for urlsplit, and the URL was shown as written,
    the password whole."""
    secrets = []
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest:
        userinfo, _, host = rest.rpartition("@")  # (the host has no "@")
        user, colon, password = userinfo.partition(":")
        if colon:
            secrets.append(password)
            rest = f"{user}:***@{host}"

    def hide(match) -> str:
        secrets.append(match.group(2))
        return f"{match.group(1)}password=***"

    rest = re.sub(r"([?&])password=([^&]*)", hide, rest)  # (to the next parameter: a "#" too)
    return scheme + sep + rest, [secret for secret in secrets if secret]


def shown_url(url: str) -> str:
    """The URL as errors show it, its password masked: errors reach logs,
    the dashboard and the coordinator's job records, which must not hold
    the server's password."""
    return _masked(url)[0]


def check_url(url, operator: str) -> None:
    """A URL redis-py cannot parse is refused when the flow is built."""
    from redis.connection import parse_url

    if not isinstance(url, str):
        raise TypeError(f"{operator} needs a Redis URL (redis://host:port/db), got {type(url).__name__}")
    try:
        parse_url(url)
    except ValueError as exc:
        shown, secrets = _masked(url)
        reason = str(exc)
        # redis-py's reason may quote a piece of the password ("Port could not be
        # cast to integer value as 'Se'", of "user:Se#cret@host")
        if any(piece in reason for secret in secrets for piece in re.split(r"[#/?@:]", secret) if piece):
            reason = ("it does not parse (a password's special characters, # / ? @ : %, must be "
                      "percent-encoded)")
        raise ValueError(f"{operator}: {shown!r} is not a Redis URL: {reason}") from None


def _url_options(url: str) -> dict:
    """The options in a URL's query (redis-py passes them to the client,
    over the connector's own)."""
    from urllib.parse import parse_qs, urlsplit

    try:
        return parse_qs(urlsplit(url).query)
    except ValueError:  # (check_url has parsed it: redis-py's reading is the one that counts)
        return {}


def _check_no_decode_in_url(url: str) -> None:
    """redis-py lets a URL's `decode_responses=` override the client's
    own (any value: "false" is a non-empty str, so true), so the source's
    `decode=False` got str ids and failed on them with a bare
    AttributeError ('str' object has no attribute 'decode'), and
    `decode=True` could not be told apart from it."""
    if "decode_responses" in _url_options(url):
        raise ValueError(f"from_redis_stream: {shown_url(url)!r} sets decode_responses, which the source "
                         "sets itself: leave it out of the URL and give decode= (True: str, False: bytes)")


# The socket timeouts the connector sets (`_connect`), which a URL's would override
_TIMEOUTS_SET = ("socket_timeout", "socket_connect_timeout")


def check_no_timeouts_in_url(url: str, operator: str) -> None:
    """redis-py lets a URL's socket timeouts override the client's own: a
    followed source's XREAD, which waits `block` for entries past
    `timeout`, failed with "Timeout reading from ..." (the server up) under
    a shorter `?socket_timeout=`. Refused rather than overridden: the URL
    would say one thing and the connector do another."""
    options = _url_options(url)
    for option in _TIMEOUTS_SET:
        if option in options:
            raise ValueError(f"{operator}: {shown_url(url)!r} sets {option}, which the connector sets "
                             "itself (from timeout=, and a followed source's blocking reads wait longer): "
                             "leave it out of the URL and give timeout= (seconds)")


# ASCII digits only (`\d` takes any Unicode digit, which Redis refuses),
# each part an unsigned 64-bit number, as Redis reads an id.
_ENTRY_ID = re.compile(r"[0-9]+(-[0-9]+)?")
_ID_PART_MAX = 2**64 - 1


def _is_entry_id(start) -> bool:
    return (isinstance(start, str) and _ENTRY_ID.fullmatch(start) is not None
            and all(int(part) <= _ID_PART_MAX for part in start.split("-")))


def check_start(start) -> None:
    if start != "$" and not _is_entry_id(start):
        raise ValueError(f"from_redis_stream: start must be an entry id ('0', '1700000000000-0') "
                         f"or '$', got {start!r}")


def check_timeout(timeout) -> None:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")


def _connect(url: str, timeout: float, decode: bool, block_s: float = 0.0):
    # socket_timeout bounds every reply (an unanswering server is an error
    # after `timeout`, not a hang); a blocking XREAD may take `block_s` more.
    # No retries: a connection refused is reported at once.
    return _redis_asyncio().Redis.from_url(
        url, decode_responses=decode, socket_connect_timeout=timeout,
        socket_timeout=timeout + block_s, retry=None,
    )


def _key_denied(exc: BaseException) -> bool:
    """Whether Redis refused a key to this user (NOPERM, by its ACL's key
    patterns), not a command."""
    text = str(exc)
    refused = type(exc).__name__ == "NoPermissionError" or text.startswith("NOPERM")
    return refused and "permissions to access" in text and "key" in text


def _redis_error(operator: str, url: str, command: str, stream, exc: BaseException,
                 access: str = "read") -> OperatorError:
    """An error from Redis (unreachable, a key of another type...), naming
    the operator, the server, the command and the stream (`access`: what
    the step does with it, "read" or "write")."""
    import redis.exceptions as errors

    url = shown_url(url)  # never the password
    where = f"{command} on {url} stream {stream!r}"
    if isinstance(exc, errors.AuthenticationError) or (
            isinstance(exc, errors.ResponseError) and str(exc).startswith(("NOAUTH", "WRONGPASS"))):
        # (a ConnectionError too, in redis-py: not "is a server running?")
        hint = f"the server at {url} refused the password or user name (or needs one)"
    elif _key_denied(exc):
        hint = (f"the server's ACL does not let the user of {url} {access} the key {stream!r} (ACL GETUSER "
                "shows its key patterns)" if isinstance(stream, str) else
                f"the server's ACL does not let the user of {url} {access} one of the keys {stream!r} (Redis "
                "does not say which; ACL GETUSER shows its key patterns)")
    elif isinstance(exc, (errors.ConnectionError, errors.TimeoutError, OSError, asyncio.TimeoutError)):
        hint = f"is a Redis server running at {url}? (no answer within the timeout, or refused)"
    elif "WRONGTYPE" in str(exc):
        hint = f"the key {stream!r} holds another type than a stream"
    elif isinstance(exc, UnicodeDecodeError):  # decode=True, and an entry that is not text
        hint = ("an entry holds bytes that are not UTF-8 text: decode=False gives the fields as bytes "
                "(decode them in a map, as they are)")
    else:
        hint = None
    return OperatorError.wrap(operator, where, exc, has_record=False, hint=hint)


class RedisStreamSource(Source):
    """Reads this kernel's streams (`streams[index::peers]`) from their
    positions, in batches of at most `batch_size` (and `records_wanted`)."""

    def __init__(self, url: str, stream, batch_size: int = DEFAULT_BATCH_SIZE, *, follow: bool = False,
                 start: str = "0", decode: bool = True, timeout: float = 5.0, block: float = 0.5) -> None:
        check_url(url, "from_redis_stream")
        _check_no_decode_in_url(url)
        check_no_timeouts_in_url(url, "from_redis_stream")
        self.url = url
        self.all_streams = _streams(stream)
        self.batch_size = check_batch_size(batch_size)
        # a flag other than a bool was taken for its truth value: follow="no" followed
        for flag, value in (("follow", follow), ("decode", decode)):
            if not isinstance(value, bool):
                raise ValueError(f"from_redis_stream: {flag} must be True or False, got {value!r}")
        self.follow = follow
        check_start(start)
        self.start = start
        self.decode = decode
        check_timeout(timeout)
        self.timeout = timeout
        self.block = block  # seconds one XREAD of a followed stream waits for new entries

    def open(self, context):
        self.streams = self.all_streams[context.index :: context.peers]
        # The last id handed on, per stream ("$": the end as the reader finds it).
        self._positions: dict[str, str] = dict.fromkeys(self.streams, self.start)
        self._ends: dict[str, str | None] | None = None  # a bounded read's last ids
        self._chunks: list[tuple[str, list]] = []  # (stream, [entries]) read, not yet handed on
        self._buffered = 0
        # Two batches: the reader's next XREAD is under way while the
        # kernel hands on the one before, so neither waits for the other.
        self._buffer_limit = 2 * self.batch_size
        self._space: asyncio.Future | None = None
        self._reader_started = False
        self._done = False  # the reader read everything there is to read
        self._done_streams: list = []  # see restore

    # -- positions -------------------------------------------------------------

    def on_epoch(self, epoch):
        return {"positions": dict(self._positions), "ends": self._ends, "done": self._done_streams,
                "streams": self.all_streams}

    def restore(self, snapshot):
        self._check_same_owners(snapshot.get("streams"))
        # streams that kernels of a run on another number of kernels had read to the end
        self._done_streams = list(snapshot.get("done", ()))
        done = set(self._done_streams)
        self.streams = [s for s in self.streams if s not in done]
        positions = snapshot["positions"]
        self._positions = {s: positions.get(s, self.start) for s in self.streams}
        ends = snapshot["ends"]
        # the streams whose ends were never taken have none here: taken when the reader starts
        self._ends = None if ends is None else {s: ends[s] for s in self.streams if s in ends}

    def _check_same_owners(self, old_streams) -> None:
        """A run resumed on as many kernels restores each kernel from its own
        snapshot: a stream now read by another kernel than before (the list
        reordered, or a stream put before it) would find no position there
        and be read again from `start`, every entry a second time."""
        if old_streams is None or old_streams == self.all_streams:
            return  # (snapshots of earlier versions do not name the streams)
        index, peers = self.context.index, self.context.peers
        for stream in self.streams:
            if stream in old_streams and old_streams.index(stream) % peers != index:
                raise ValueError(
                    f"the stream list changed from {old_streams} to {self.all_streams} "
                    f"since the run this one resumes, and stream {stream!r} moved from kernel "
                    f"{old_streams.index(stream) % peers} to kernel {index}, whose snapshot does not "
                    "hold its position (it would be read again from the start): resume with the "
                    "old list, or add new streams at its end")

    def rescale(self, snapshots, owns):
        # Streams are the partitions (`streams[index::peers]`): merge every
        # old kernel's positions; a kernel that had ended read its streams
        # to their ends, which this run must not read again.
        old = len(snapshots)
        # the old run's list (an ended kernel's streams are its share of that one)
        old_streams = next((s["streams"] for s in snapshots if s != self.ENDED and "streams" in s),
                           self.all_streams)
        # A kernel that had not taken its streams' ends yet (its reader had
        # not started) gives none: only those streams' ends are taken anew,
        # the others keep theirs.
        positions: dict = {}
        ends: dict = {}
        done: list = []
        for k, snapshot in enumerate(snapshots):
            if snapshot == self.ENDED:
                done += old_streams[k::old]
                continue
            positions.update(snapshot["positions"])
            done += snapshot.get("done", ())
            ends.update(snapshot["ends"] or {})
        return {"positions": positions, "ends": ends, "done": done}

    def cut_on_resume(self, snapshots, recorded=None) -> str | None:
        """(`Node.cut_on_resume`) A kernel that had read its share to the
        end resumes as ended and its snapshot says nothing more (not even its
        streams): a stream added since that lands there would never be read.
        Then every kernel restores from all the snapshots (`rescale`), and
        the step, ended on some kernels only, reads again on each: what an
        ended kernel had read is done, what is new is read from `start`.
        Ended on every kernel, no snapshot names the streams: the old list
        is the one the run that wrote them recorded (`recorded`, the step's
        `resume_record`), and a stream added since is a reason the run
        cannot resume (its end has reached every step after it)."""
        old_streams = next((s.get("streams") for s in snapshots if s != self.ENDED), None) or recorded
        if old_streams is None:
            return None  # a version that named no streams, nor recorded them
        if all(s == self.ENDED for s in snapshots):
            added = [s for s in self.all_streams if s not in old_streams]
            return (f"had ended on every kernel, before the stream {added[0]!r} was added: its bounded read "
                    f"of {old_streams} was over and its end has reached every step after it, so no run "
                    f"resumed from there can read {added[0]!r} (resume with the streams {old_streams}, and "
                    f"read the others with a fresh state_dir)" if added else None)
        peers = len(snapshots)
        for kernel, snapshot in enumerate(snapshots):
            added = [s for s in self.all_streams[kernel::peers] if s not in old_streams]
            if snapshot == self.ENDED and added:
                return f"had ended on kernel {kernel}, where the stream {added[0]!r} added since lands"
        return None

    # -- the kernel's side -----------------------------------------------------

    def poll(self):
        if not self.streams:
            return False  # this kernel's share is empty (fewer streams than kernels)
        if not self._reader_started:
            self._reader_started = True
            self.context.kernel.spawn(self._read(), name=f"{self.name} reader")
            return None  # the reader wakes the source
        if self._chunks:
            self._hand_on(min(self.batch_size, self.records_wanted))
            space = self._space
            if space is not None and not space.done() and self._buffered < self._buffer_limit:
                space.set_result(None)
            if self._chunks:
                return True
        return False if self._done else None

    def _hand_on(self, wanted: int) -> None:
        """Emit up to `wanted` buffered entries, oldest first, and move the
        positions of their streams to the last of them."""
        batch: list = []
        chunks, positions = self._chunks, self._positions
        while chunks and len(batch) < wanted:
            stream, entries = chunks[0]
            room = wanted - len(batch)
            if len(entries) <= room:
                taken = entries
                del chunks[0]
            else:
                taken = entries[:room]
                del entries[:room]
            batch += taken
            positions[stream] = taken[-1][1]
        self._buffered -= len(batch)
        self.emit(batch)

    # -- the reader task -------------------------------------------------------

    async def _read(self) -> None:
        client = _connect(self.url, self.timeout, self.decode, self.block if self.follow else 0.0)
        try:
            await self._resolve_start(client)
            cursors = dict(self._positions)  # the last id read, per stream
            if self.follow:
                await self._follow(client, cursors)
            else:
                await self._read_to_ends(client, cursors)
        finally:
            await client.aclose()
        self._done = True
        self.wake()

    async def _last_ids(self, client, streams) -> dict[str, str | None]:
        """Each stream's last entry id now (None: empty or missing): every
        stream's at one moment, without its fields (`_LAST_IDS`)."""
        try:
            try:
                ids = await client.eval(_LAST_IDS, len(streams), *streams)
            except Exception as exc:
                if not _no_scripts(exc):
                    raise
                # a user whose ACL allows no EVAL (or a server without
                # scripting): XREVRANGE itself, in one transaction, its
                # fields read (and decoded) as before
                pipe = client.pipeline(transaction=True)
                for stream in streams:
                    pipe.xrevrange(stream, "+", "-", count=1)
                ids = [r[0][0] if r else "" for r in await pipe.execute()]
        except Exception as exc:
            named = await self._wrong_key(client, streams, exc)
            raise _redis_error(self.name, self.url, "XREVRANGE", named, exc) from exc
        return {s: _as_str(i) or None for s, i in zip(streams, ids)}

    async def _wrong_key(self, client, streams: list, exc: Exception):
        """The one stream at fault where Redis said of a command over
        several that a key is not a stream (WRONGTYPE) or not this user's to
        read (NOPERM): it names no key, so each stream is asked alone; else
        `streams` as given."""
        if len(streams) == 1:
            return streams[0]
        try:
            if "WRONGTYPE" in str(exc):
                for stream in streams:
                    if _as_str(await client.type(stream)) not in ("stream", "none"):
                        return stream
            elif _key_denied(exc):
                for stream in streams:
                    try:
                        await client.xlen(stream)  # (a read of the key, as XREAD's)
                    except Exception as denied:
                        if _key_denied(denied):
                            return stream
                        if type(denied).__name__ == "NoPermissionError":
                            break  # (XLEN itself refused: no stream can be asked alone)
        except Exception:  # (the error to report is the first one)
            pass
        return streams

    async def _resolve_start(self, client) -> None:
        """`start="$"` (the end as it is now) becomes an id, so that
        positions and snapshots hold real ids; a bounded read's ends are
        taken now, unless a resumed run restored them: both in one look (an
        entry added between two looks was read by a bounded run from "$")."""
        pending = [s for s, p in self._positions.items() if p == "$"]
        ends = self._ends or {}
        missing = [] if self.follow else [s for s in self.streams if s not in ends]
        wanted = list(dict.fromkeys(pending + missing))
        if not wanted:
            return
        last = await self._last_ids(client, wanted)
        for stream in pending:
            self._positions[stream] = last[stream] or "0-0"
        if missing:
            self._ends = {**(self._ends or {}), **{s: last[s] for s in missing}}

    # Reading many streams. XREAD's COUNT is per stream: COUNT batch_size
    # over 200 streams held 200 batches in one reply, where the buffer holds
    # two. So a read asks each stream for its share of one batch
    # (`_share`); and since one busy stream among many idle ones would then
    # come a few entries a round trip (40 times slower, measured), a read of
    # every stream (a sweep) is followed by a read of those that filled
    # their share, alone, for theirs. Every other read is a sweep: no
    # stream waits behind a busy one. A reply holds about a batch (at most
    # one entry a stream where there are more streams than that).

    def _share(self, streams: int) -> int:
        return max(1, self.batch_size // streams)

    async def _xread(self, client, cursors: dict[str, str], block_ms: int | None):
        try:
            reply = await client.xread(cursors, count=self._share(len(cursors)), block=block_ms)
        except Exception as exc:
            named = await self._wrong_key(client, list(cursors), exc)
            raise _redis_error(self.name, self.url, "XREAD", named, exc) from exc
        _raise_if_cancelled()
        return _by_stream(reply)

    async def _read_to_ends(self, client, cursors: dict[str, str]) -> None:
        ends = self._ends or {}
        active = {s: c for s, c in cursors.items()
                  if ends.get(s) is not None and _id_key(c) < _id_key(ends[s])}
        busy: list[str] = []  # the streams that filled their share in the last sweep
        while active:
            read = {s: active[s] for s in busy if s in active} if busy else dict(active)
            share = self._share(len(read))
            replies = await self._xread(client, read, None)
            got, filled = set(), []
            for name, entries in replies:
                stream = _as_str(name)
                end = _id_key(ends[stream])
                last = _as_str(entries[-1][0])
                if _id_key(last) >= end:  # the end is in this reply: keep up to it, then stop
                    entries = [e for e in entries if _id_key(_as_str(e[0])) <= end]
                    del active[stream]
                else:
                    active[stream] = last
                    got.add(stream)
                    if len(entries) >= share:
                        filled.append(stream)
                await self._buffer(stream, entries)
            for stream in read:
                if stream in active and stream not in got:  # nothing after it: trimmed or deleted to the end
                    del active[stream]
            busy = [] if busy else filled

    async def _follow(self, client, cursors: dict[str, str]) -> None:
        block_ms = max(1, int(self.block * 1000))
        busy: list[str] = []  # the streams that filled their share in the last sweep
        while True:
            read = {s: cursors[s] for s in busy} if busy else cursors
            share = self._share(len(read))
            replies = await self._xread(client, read, None if busy else block_ms)
            filled = []
            for name, entries in replies:
                stream = _as_str(name)
                cursors[stream] = _as_str(entries[-1][0])
                if len(entries) >= share:
                    filled.append(stream)
                await self._buffer(stream, entries)
            busy = [] if busy else filled

    async def _buffer(self, stream: str, entries: list) -> None:
        """Hand `entries` (redis-py's `(id, fields)` pairs) to the source;
        wait while two batches are waiting, so a fast stream cannot outrun
        the dataflow."""
        if not entries:
            return
        if self.decode:
            records = [RedisEntry(stream, entry_id, fields) for entry_id, fields in entries]
        else:
            records = [RedisEntry(stream, entry_id.decode(), fields) for entry_id, fields in entries]
        self._chunks.append((stream, records))
        self._buffered += len(records)
        self.wake()
        while self._buffered >= self._buffer_limit:
            _raise_if_cancelled()
            self._space = asyncio.get_running_loop().create_future()
            await self._space


class ToRedisStream(Operator):
    """Appends every record to a Redis stream with `XADD`, pipelined in
    batches of `batch_size`, at least once after a crash (see the module).

    A record is a mapping of fields to values (str, bytes, int or float), or
    a `RedisEntry` (its fields: copying a stream)."""

    def __init__(self, url: str, stream: str, batch_size: int = DEFAULT_BATCH_SIZE, *,
                 maxlen: int | None = None, timeout: float = 5.0) -> None:
        if not isinstance(stream, str) or not stream:
            raise ValueError(f"to_redis_stream needs a stream name, got {stream!r}")
        # (MAXLEN is a signed 64-bit count in Redis: 2**63 failed the run's first XADD)
        if maxlen is not None and (not isinstance(maxlen, int) or isinstance(maxlen, bool)
                                   or not 1 <= maxlen <= _MAXLEN_MAX):
            raise ValueError(f"maxlen must be a positive int or None, got {maxlen!r}")
        check_timeout(timeout)
        check_url(url, "to_redis_stream")
        check_no_timeouts_in_url(url, "to_redis_stream")
        self.url = url
        self.stream = stream
        self.batch_size = check_batch_size(batch_size)
        self.maxlen = maxlen
        self.timeout = timeout

    def open(self, context):
        self._writer = None  # the writer task, once started
        self._pending: list[dict] = []  # fields to add, oldest first; dropped once acknowledged
        # Redis slower than the flow: past this many entries the kernel's
        # input pauses until the writer has sent all but a batch or two.
        self._pause_at = 4 * self.batch_size
        self._paused = False
        self._writer_started = False
        self._ready: asyncio.Future | None = None
        self._ended = False

    def on_batch(self, port, batch):
        pending = self._pending
        for record in batch:
            if isinstance(record, RedisEntry):
                record = record.fields
            if not _encodable(record):
                raise _unencodable(self.name, self.stream, record)
            pending.append(record)
        if len(pending) >= self._pause_at and not self._paused:
            self._paused = True
            self.pause_input(True)
        self._kick()

    def on_end(self):
        self._ended = True
        self._kick()
        # The step ends once Redis has acknowledged everything: an epoch
        # taken on another kernel meanwhile must hold what is unwritten
        # here, not count this step as ended (its writes would be lost to
        # a crash before them).
        return self._writer

    def _kick(self) -> None:
        if not self._writer_started:
            if not self._pending:
                return  # nothing to write: no connection, no task holding the run open
            self._writer_started = True
            self._writer = self.context.kernel.spawn(self._write(), name=f"{self.name} writer")
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(None)

    # At least once: what Redis has not acknowledged is in the snapshot.
    def on_epoch(self, epoch):
        return {"pending": list(self._pending)}

    def restore(self, snapshot):
        self._pending = list(snapshot["pending"])
        self._kick()

    def rescale(self, snapshots, owns):
        # not keyed: every old kernel's unacknowledged entries to kernel 0
        if self.context.index != 0:
            return {"pending": []}
        return {"pending": [entry for s in snapshots if s != self.ENDED for entry in s["pending"]]}

    async def _write(self) -> None:
        client = _connect(self.url, self.timeout, decode=False)
        try:
            while True:
                pending = self._pending
                if not pending:
                    if self._ended:
                        return
                    self._ready = asyncio.get_running_loop().create_future()
                    await self._ready
                    continue
                chunk = pending[: self.batch_size]
                await self._xadd(client, chunk)
                del self._pending[: len(chunk)]  # acknowledged: out of the next snapshot
                if self._paused and len(self._pending) <= 2 * self.batch_size:
                    self._paused = False
                    self.pause_input(False)
        finally:
            await client.aclose()

    async def _xadd(self, client, chunk: list[dict]) -> None:
        pipe = client.pipeline(transaction=False)
        stream, maxlen = self.stream, self.maxlen
        for fields in chunk:
            pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)
        try:
            await pipe.execute()
        except Exception as exc:
            raise await self._xadd_error(chunk, exc) from exc

    async def _xadd_error(self, chunk: list[dict], exc: BaseException) -> OperatorError:
        """An XADD that failed. Redis closes the connection on an argument
        over its proto-max-bulk-len or client-query-buffer-limit, which
        redis-py reports as a reset or closed connection: where the chunk
        holds an argument that large, the error says which entry and limit.
        (Measured here, after the failure: nothing per record on the way.)"""
        import redis.exceptions as errors

        closed = isinstance(exc, (errors.ConnectionError, OSError)) and not isinstance(
            exc, errors.AuthenticationError)
        if closed or "Protocol error" in str(exc):
            record, what, size = _largest_argument(chunk)
            if size > _LEAST_LIMIT:  # (below it, no setting of either limit refuses it)
                hint = _too_large(what, size, self.stream, await self._limits())
                if hint is not None:
                    where = f"XADD on {shown_url(self.url)} stream {self.stream!r}"
                    return OperatorError.wrap(self.name, where, exc, record=record, hint=hint)
        return _redis_error(self.name, self.url, "XADD", self.stream, exc, access="write")

    async def _limits(self) -> dict[str, int] | str | None:
        """The server's limits on an argument, by CONFIG GET on a new
        connection; a str: why they could not be read (a user without
        the right to CONFIG); None: the server does not answer at all."""
        import redis.exceptions as errors

        client = _connect(self.url, self.timeout, decode=True)
        try:
            return {name: int((await client.config_get(name))[name]) for name in _LIMITS}
        except errors.ResponseError as exc:
            return str(exc)
        except Exception:
            return None
        finally:
            await client.aclose()


# Redis refuses an argument over proto-max-bulk-len (an error, then it
# closes the connection) or client-query-buffer-limit (it closes it); neither
# can be set below 1 MiB.
_LIMITS = ("proto-max-bulk-len", "client-query-buffer-limit")
_LEAST_LIMIT = 1024 * 1024


def _largest_argument(chunk: list[dict]) -> tuple[dict, str, int]:
    """The entry of `chunk` with the largest field name or value as XADD
    sends it (UTF-8, numbers as text), what that is, and its bytes."""
    entry, name, is_value, largest = chunk[0], None, True, -1
    for fields in chunk:
        for field, value in fields.items():
            for argument, of_value in ((value, True), (field, False)):
                size = _encoded_size(argument)
                if size > largest:
                    entry, name, is_value, largest = fields, field, of_value, size
    what = "the value of field" if is_value else "the field name"
    return entry, f"{what} {describe_record(name)}", largest


def _encoded_size(argument) -> int:
    if isinstance(argument, str):
        return len(argument.encode())
    return len(argument) if isinstance(argument, bytes) else len(str(argument))


def _too_large(what: str, size: int, stream: str, limits) -> str | None:
    """The hint for an entry with an argument of `size` bytes that Redis
    closed the connection on; None where the limits show it was not that."""
    if limits is None:
        return None  # no answer at all: the server is down, not the entry too large

    def advice(setting: str) -> str:
        return f"(write smaller entries to {stream!r}, or raise it: CONFIG SET {setting} on the server)"

    if isinstance(limits, str):
        return (f"{what} is {size} bytes: if the server is up, the entry is too large for it, over its "
                f"proto-max-bulk-len or client-query-buffer-limit (CONFIG GET could not read them: "
                f"{limits}) {advice('proto-max-bulk-len / client-query-buffer-limit')}")
    for name in _LIMITS:
        if size > limits[name]:
            return (f"the entry is too large for the server: {what} is {size} bytes, over its {name} "
                    f"({limits[name]} bytes), and Redis closed the connection {advice(name)}")
    return None


def _encodable(record) -> bool:
    if not isinstance(record, dict) or not record:
        return False
    kinds = _ENCODABLE
    return all(type(k) in kinds and type(v) in kinds for k, v in record.items())


def _why_not(record) -> str:
    """What in a dict record XADD cannot take (the dict itself it can: it
    said "cannot XADD dict" of `{'a': [1, 2]}`)."""
    if not isinstance(record, dict):
        return ""
    if not record:
        return ": it is empty"
    for field, value in record.items():
        if type(field) not in _ENCODABLE:
            return f": its field name {describe_record(field)} is a {type(field).__name__}"
        if type(value) not in _ENCODABLE:
            return f": its field {describe_record(field)} holds a {type(value).__name__}"
    return ""


def _unencodable(operator: str, stream: str, record: Any) -> OperatorError:
    problem = TypeError(f"cannot XADD {type(record).__name__} to stream {stream!r}{_why_not(record)}")
    return OperatorError.wrap(
        operator, "XADD", problem, record=record,
        hint="a record for to_redis_stream is a non-empty dict of fields to str, bytes, int or float "
             "values (map it into one first: .map(lambda r: {'data': json.dumps(r)}))",
    )
