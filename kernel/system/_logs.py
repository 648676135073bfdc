"""A job's log on an executor, served in pieces: by the executor from its
file (`ExecutorDaemon._log`), and by the coordinator from the tail it
keeps of an executor that left (`LeftLogs`).

Why the coordinator keeps a tail at all: a `logs --follow` asks every
executor the job ran on for what follows its offset there, every 0.2 s,
and once more after the job has ended. An executor being stopped (SIGTERM:
`ExecutorDaemon._leave`) stops its job processes, which write their last
lines (`interrupted`, an atexit's), says "left" and exits: the lines
written after the follower's last ask there were unreachable to it, though
the log on the executor's disk had them (a job killed meanwhile: its
follower ended on `interrupted`, its last words lost; a job moved off the
executor: what the old attempt wrote as it stopped). The executor waits
for the answer to "left", so it is still connected then: the coordinator
asks it, first, for the rest of each log that a client connection still
open has read there, from the offset the furthest on of them asked from
last, and back to each further back as far as the bound lets it (one far
behind does not cost those at the end their last lines), and serves a
follower from that copy once the executor has gone.

Bounded: a tail of at most KEEP_MOST_PER_LOG bytes per log and KEEP_MOST
in all, fetched within FETCH_WITHIN seconds (the executor waits
LEAVE_TIMEOUT, 2 s, for its answer), kept KEEP_FOR seconds. What lies
beyond a tail cut short stays on the executor's disk: a follower that
reaches the cut hears the executor's logs unreachable, as before, rather
than a log that ends there. A reader further back than the tail (a `logs`
from the start, begun after the leave) hears so too: the tail is not
given as the whole.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from kernel.system._wire import ConnectionLost, RequestError

log = logging.getLogger("kernel.system")

LOG_CHUNK = 1 << 20  # the most bytes of a log one `logs` request answers with, per executor

FETCH_WITHIN = 1.0  # seconds a leaving executor's tails are fetched in (it waits 2 s for "left"'s answer)
KEEP_FOR = 60.0  # seconds a left executor's tails are served after it left
KEEP_MOST_PER_LOG = 4 << 20  # bytes of one log's tail, at most
KEEP_MOST = 64 << 20  # bytes of all tails kept, at most
# places kept per client connection, at most (the oldest asked go first): a
# connection naming a new follower at each `logs` would grow them for ever
PLACES_MOST = 4096


def cut_character(data: bytes) -> int:
    """How many bytes at the end of `data` are a UTF-8 character begun and
    not finished: the next piece starts with them. (Each piece is decoded on
    its own: a character cut by the 1 MiB boundary, or by a read while the
    job was writing it, came out as replacement characters.)"""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return 0  # ASCII: nothing begun
        if byte >= 0xC0:  # a lead byte: how long is its character?
            size = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return back if size > back else 0
    return 0  # (continuation bytes only: not UTF-8 to mend)


def log_piece(data: bytes, offset: int) -> dict:
    """The `logs` answer for `data`, read at `offset`: its text, less a
    character not finished, and the offset after it."""
    data = data[: len(data) - cut_character(data)]
    return {"text": data.decode(errors="replace"), "offset": offset + len(data)}


@dataclass
class Tail:
    """The rest of one log from `start`, as its executor left; `whole`:
    to the log's end (else cut at a bound, or by the fetch's time)."""

    start: int
    data: bytearray
    kept_at: float
    whole: bool = False
    # the bytes it may still take, while its fetch is under way: counted as
    # kept (`LeftLogs._held`), or executors leaving at once each had all the
    # room, and held N times KEEP_MOST
    reserved: int = 0


class LeftLogs:
    """The coordinator's memory of where each client connection reads the
    logs it asked for, and the tails of those logs on executors that left.
    `clock`: monotonic seconds."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        # each open client connection's places, by id(): (job, executor, follower) ->
        # the offset that follower's last `logs` of the job asked from there (a
        # follower: one `logs` command, or any other reader, by the id its requests
        # carry; None for those that carry none). By connection, not by time: a
        # follower held for minutes by a slow reader (a pager) is still one, its
        # place kept, and one that has ended (`logs` without --follow) is not.
        # By follower too: two following one job on one connection kept one place,
        # the last asked, and the one behind lost its last lines as the executor left.
        self._readers: dict[int, dict[tuple[str, str, str | None], int]] = {}
        self._tails: dict[tuple[str, str], Tail] = {}

    def reader(self) -> dict[tuple[str, str, str | None], int]:
        """The places of a new client connection, to pass to `asked`; kept
        until `closed`."""
        places: dict[tuple[str, str, str | None], int] = {}
        self._readers[id(places)] = places
        return places

    def closed(self, places: dict) -> None:
        self._readers.pop(id(places), None)

    @staticmethod
    def asked(places: dict, job: str, executor: str, offset: int, follower: str | None = None) -> None:
        """A `logs` of `job` by `follower` on the connection of `places` asked
        `executor`'s log from `offset` (its last place there: a follower only goes on)."""
        key = (job, executor, follower)
        places.pop(key, None)  # (to the end: the places asked longest ago go first)
        places[key] = max(0, offset)
        while len(places) > PLACES_MOST:
            del places[next(iter(places))]

    async def fetch(self, session, executor: str) -> None:
        """`executor` is leaving, its job processes stopped, still connected
        on `session`: the rest of each of its logs that a connection open
        reads, from the place furthest on, and back to the others' as far
        as the bound lets it (`_fetch_tail`), kept. Within FETCH_WITHIN
        seconds; what came by then is kept, cut there."""
        now = self._clock()
        self._expire(now)
        for key in [k for k in self._tails if k[1] == executor]:  # (of an earlier leave: it came back)
            del self._tails[key]
        room = KEEP_MOST - self._held()
        places: dict[str, set[int]] = {}  # job -> its readers' places there
        for reader in self._readers.values():
            for (job, e, _), offset in reader.items():
                if e == executor:
                    places.setdefault(job, set()).add(offset)
        tails, fetches = [], []
        for job, offsets in sorted(places.items()):
            most = max(0, min(KEEP_MOST_PER_LOG, room))
            room -= most
            ahead = sorted(offsets, reverse=True)
            tail = self._tails[(job, executor)] = Tail(ahead[0], bytearray(), now, reserved=most)
            tails.append(tail)
            fetches.append(self._fetch_tail(session, job, tail, ahead, most))
        if not fetches:
            return
        failures = []
        try:
            async with asyncio.timeout(FETCH_WITHIN):
                failures = await asyncio.gather(*fetches, return_exceptions=True)
        except TimeoutError:
            pass
        finally:
            for tail in tails:
                tail.reserved = 0
        for failure in failures:  # (what came before it kept: the executor's leave goes on)
            if isinstance(failure, Exception):
                log.warning("executor %s: its logs could not all be kept as it left: %s: %s", executor,
                            type(failure).__name__, failure)
        cut = sum(not t.whole for t in tails)
        log.info("executor %s left: %d bytes of the %d log(s) read there kept for their readers (%s), "
                 "fetched in %.0f ms", executor, sum(len(t.data) for t in tails), len(tails),
                 f"{cut} cut short, the rest on its disk only" if cut else "whole",
                 1000 * (self._clock() - now))

    @staticmethod
    async def _fetch_tail(session, job: str, tail: Tail, places: list[int], most: int) -> None:
        """The log's rest from its readers' furthest place on (`places`,
        furthest first) into `tail`, at most `most` bytes; then, that whole,
        back to each place behind it that fits in `most` too. (From the
        place furthest back, cut at `most`: a follower at the end, beside
        one behind by more than that, was past the cut, its last lines lost.)"""
        while len(tail.data) < most:
            data = await _read(session, job, tail.start + len(tail.data))
            if data is None:
                return
            if not data:
                tail.whole = True
                break
            tail.data += data[: most - len(tail.data)]
        for place in places[1:]:
            if not tail.whole or tail.start - place + len(tail.data) > most:
                return  # (nor any further back: it would reach a cut)
            front = bytearray()
            while len(front) < tail.start - place:
                data = await _read(session, job, place + len(front))
                if not data:  # (gone, or the log shorter than read before: what came is kept)
                    return
                front += data[: tail.start - place - len(front)]
            tail.data[:0] = front
            tail.start = place

    def piece(self, job: str, executor: str, offset: int) -> dict | None:
        """`logs`' answer for `executor`'s log from `offset`, gone with the
        executor, from the tail kept; None where it does not hold it (none
        kept, or not from there, or cut short there)."""
        self._expire(self._clock())
        tail = self._tails.get((job, executor))
        if tail is None or not tail.start <= offset <= tail.start + len(tail.data):
            return None
        at = offset - tail.start
        answer = log_piece(bytes(tail.data[at: at + LOG_CHUNK]), offset)
        if answer["offset"] == offset and not tail.whole:
            return None  # (the rest is on the executor's disk only)
        return answer

    def _held(self) -> int:
        """The bytes of the tails kept, and those reserved by fetches under way."""
        return sum(max(len(t.data), t.reserved) for t in self._tails.values())

    def _expire(self, now: float) -> None:
        for key in [k for k, t in self._tails.items() if now - t.kept_at > KEEP_FOR]:
            del self._tails[key]


async def _read(session, job: str, offset: int) -> bytes | None:
    """A piece of the job's log from `offset`, its bytes as they are on disk
    (as latin-1 text: `ExecutorDaemon._log`); None: the executor gone."""
    try:
        reply = await session.request("logs", job=job, offset=offset, raw=True)
    except (ConnectionLost, RequestError):  # (gone after all: what came is kept)
        return None
    return reply["text"].encode(reply.get("encoding", "utf-8"))
