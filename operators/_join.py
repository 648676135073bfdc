"""`KeyedJoin`: the incremental inner join of two keyed streams, no window.

Each side's values are kept per key (list state, in epoch snapshots); a value
arriving on one side pairs at once with every value the other side holds
for its key, `(key, (left, right))`, in arrival order. The output's event
time is the later of the pair's two times (Flink's interval join), so it can
be windowed again; inputs without event time give output without it.

With `ttl=seconds` it is an interval join: a pair joins when its two times
are at most `ttl` apart, and a value is dropped once the input watermark
is more than `ttl` past its time (no value on time can pair with it any more), so
memory stays bounded on endless inputs (a key's list is cut once half of it
has expired: at most twice the values within ttl). A value behind the watermark when it
comes could have partners already dropped, so it is late: dropped and
counted (`late_count`), as windows do, and the result never depends on
when watermarks came.

Once one side's input has ended on every channel (`_port_ended`), nothing
more can meet the other side's values: they go, and that side's values
that come later are joined but not kept (a bounded table joined with an
endless stream holds the table only).

A key that is a float NaN, or a tuple holding one, matches nothing (SQL's
NULL keys; `_nan_keys`): such values are not kept, so nothing finds them.
"""

from __future__ import annotations

import heapq
import itertools
import math

from kernel.state import list_state

from kernel.dataflow._errors import PASSES_THROUGH, KernelError
from kernel.dataflow._operator import Operator, TimedBatch, rescale_fields, unfinished

from ._calls import EMIT_BATCH, LARGE_OUTPUT, PIECE, keyed_error
from ._nan_keys import holds_nan


def check_ttl(ttl) -> None:
    if ttl is None:
        return
    usable = not isinstance(ttl, bool) and isinstance(ttl, (int, float))
    if usable:
        try:
            usable = 0 <= float(ttl) < math.inf
        except OverflowError:  # an int past every float (10**400): `time + ttl` failed as records flowed
            usable = False
    if not usable:
        raise ValueError(f"ttl must be a finite number of seconds >= 0 or None, got {ttl!r}")


class KeyedJoin(Operator):
    """Inner join of ports 0 (left) and 1 (right) by key, as pairs meet."""

    #: set at build time: custom steps on the way that may drop event time
    time_hint: str | None = None

    def __init__(self, ttl: float | None = None) -> None:
        check_ttl(ttl)
        self.ttl = ttl
        self.late = 0

    def open(self, context):
        # per side: key -> [(time or None, value)] in arrival order
        self.sides = (list_state(self, "left"), list_state(self, "right"))
        self._frontier = -math.inf
        self._expiries: list = []  # heap of (time + ttl, sequence, side, key)
        # (side, key) -> its values whose expiry was popped since its list was
        # last cut: the list is cut once they are half of it (`on_watermark`)
        self._expired: dict = {}
        self._sequence = itertools.count()
        self._ended = [False, False]  # each port's input has ended: the other side keeps nothing

    def on_epoch(self, epoch):
        return {"states": super().on_epoch(epoch), "frontier": self._frontier, "late": self.late,
                "ended": list(self._ended)}

    def restore(self, snapshot):
        super().restore(snapshot["states"])
        self._frontier, self.late = snapshot["frontier"], snapshot["late"]
        self._ended = list(snapshot.get("ended", (False, False)))  # (a snapshot from before it was kept)
        if self.ttl is not None:
            for side, values in enumerate(self.sides):
                for key, entries in values.items():
                    for stamp, _ in entries:
                        self._expire_at(stamp, side, key)

    def rescale(self, snapshots, owns):
        out = rescale_fields(snapshots, owns, self.context.index == 0,
                             states="states", frontier="min", late="sum_first")
        if out is not None:  # a port ended on every old kernel has ended for the new ones
            live = [s for s in snapshots if s is not None and s != self.ENDED]
            out["ended"] = [all(s.get("ended", (False, False))[port] for s in live) for port in (0, 1)]
        return out

    def _port_ended(self, port: int) -> None:
        """Every channel of `port` has ended (the instance says so): the
        other side's values can meet nothing more, and go. An enrichment,
        a bounded table joined with an endless stream, kept every value of
        the stream to the end of the run."""
        self._ended[port] = True
        other = 1 - port
        self.sides[other].clear()
        if self.ttl is not None:
            self._expiries = [entry for entry in self._expiries if entry[2] != other]
            heapq.heapify(self._expiries)
            self._expired = {at: n for at, n in self._expired.items() if at[0] != other}

    def on_batch(self, port, batch):
        timed = batch.__class__ is TimedBatch
        if self.ttl is not None and not timed:
            raise KernelError(f"{self.name}: a join with ttl= needs event time, but these records carry "
                              "no timestamps: give the sources timestamp=..." + (self.time_hint or ""))
        pieces = self._pairs(port, batch, batch.timestamps if timed else itertools.repeat(None))
        self._emit(*next(pieces))
        # A hot key (a value meeting thousands on the other side) can make
        # millions of pairs from one batch: past LARGE_OUTPUT they are made
        # and handed on a piece a tick (the rest of the batch after them)
        return unfinished((self._piece(out, stamps) for out, stamps in pieces), self.emit)

    def _pairs(self, port: int, batch, stamps):
        """`(pairs, their times)` for `batch`: all of them, or once they
        pass LARGE_OUTPUT, those so far, then PIECE at a time (a generator:
        the batch's later records are joined, and kept, as it is read)."""
        mine, theirs = self.sides[port], self.sides[1 - port]
        ttl, frontier = self.ttl, self._frontier
        keep = not self._ended[1 - port]  # (nothing more comes to meet this side's values)
        out: list = []
        out_stamps: list = []
        limit = LARGE_OUTPUT
        handed = False  # pairs yielded already
        for record, stamp in zip(batch, stamps):
            try:
                key, value = record
                if ttl is not None and stamp < frontier:
                    self.late += 1
                    continue
                others = theirs.get(key, ())
            except PASSES_THROUGH:
                raise
            except BaseException as exc:
                raise keyed_error(self.name, "join", exc, record) from exc
            # (the yields stay out of the try: closing this generator raises GeneratorExit there)
            for at in range(0, len(others), PIECE):  # a hot key's partners a piece's worth at a time
                for other_stamp, other in (others if len(others) <= PIECE else others[at:at + PIECE]):
                    if ttl is not None and abs(stamp - other_stamp) > ttl:
                        continue
                    out.append((key, (value, other) if port == 0 else (other, value)))
                    out_stamps.append(None if stamp is None or other_stamp is None
                                      else max(stamp, other_stamp))
                if len(out) >= limit:
                    yield out, out_stamps
                    out, out_stamps, limit = [], [], PIECE
                    handed = True
            if keep:
                try:
                    kept = mine.get(key)
                    if kept is None:
                        if holds_nan(key):  # (looked for on a miss only) it would match nothing: not kept
                            continue
                        mine[key] = [(stamp, value)]
                    else:
                        kept.append((stamp, value))
                    if ttl is not None:
                        self._expire_at(stamp, port, key)
                except PASSES_THROUGH:
                    raise
                except BaseException as exc:
                    raise keyed_error(self.name, "join", exc, record) from exc
        if out or not handed:
            yield out, out_stamps

    @staticmethod
    def _piece(out: list, stamps: list) -> list:
        return TimedBatch(out, stamps) if None not in stamps else out

    def _emit(self, out: list, stamps: list) -> None:
        if not out:
            return
        timed = None not in stamps
        for i in range(0, len(out), EMIT_BATCH):
            part = out[i:i + EMIT_BATCH]
            self.emit(TimedBatch(part, stamps[i:i + EMIT_BATCH]) if timed else part)

    def _expire_at(self, stamp: float, side: int, key) -> None:
        heapq.heappush(self._expiries, (stamp + self.ttl, next(self._sequence), side, key))

    def on_watermark(self, watermark):
        self._frontier = watermark
        expiries, expired = self._expiries, self._expired
        due = set()
        while expiries and expiries[0][0] < watermark:
            _, _, side, key = heapq.heappop(expiries)
            expired[side, key] = expired.get((side, key), 0) + 1
            due.add((side, key))
        ttl = self.ttl
        for side, key in due:
            values = self.sides[side]
            entries = values.get(key, ())
            # A key's list is cut once half of it has expired, not at every
            # value that expires: each cut reads the whole list, so a hot key
            # with 10,000 values within ttl read it per value (an interval
            # join of 80,000 events on one key: 64 s; ~1 s with a ttl of 1).
            # An expired value left in the list pairs with nothing: a value
            # on time is at or after the watermark, so more than ttl after it.
            if 2 * expired[side, key] < len(entries):
                continue
            del expired[side, key]
            # Judged as pairs are (`_pairs`: the difference of times), not by
            # the heap's float sum: 0.2 + 0.7 is 0.8999999999999999, and a
            # value at 0.2 was dropped at a watermark of 0.9 while a value at
            # 0.9, on time, still paired with it (0.9 - 0.2 == 0.7). The
            # difference only grows with the watermark, so a value dropped
            # this way has no partner on time any more.
            kept = [entry for entry in entries if watermark - entry[0] <= ttl]
            if kept:
                values[key] = kept
                for entry in kept:
                    if entry[0] + ttl < watermark:  # its expiry was popped: looked at again later
                        heapq.heappush(expiries, (watermark, next(self._sequence), side, key))
            else:
                values.pop(key, None)

    def on_end(self):
        if self.late:
            self.context.logger.warning(
                "%s: dropped %d late values (behind the watermark: their partners may have expired)",
                self.name, self.late, extra={"step": self.name})

    def result(self):
        return {"late": self.late} if self.late else None
