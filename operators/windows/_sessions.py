"""Session windows, kept per key.

A session starts at its first event and ends at its last event plus `gap`;
an event joins a session when it comes less than `gap` after the session's
previous event, or less than `gap` before its first, and an event that
bridges two sessions merges them. An aggregation without a merge keeps a
session's raw values (`_Values`) and aggregates them, in arrival order, when
the session closes.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from itertools import count
from operator import itemgetter

from kernel.state import value_state

from kernel.dataflow._errors import PASSES_THROUGH

from .._windows import Window, _Values
from ._strategy import TimeTooLarge, WindowStrategy

_first = itemgetter(0)
_MISSING = object()


class SessionWindows(WindowStrategy):
    """`sessions` (keyed state, key -> [[start, end, acc]] by start) and a
    heap of (end, start, sequence, key) fire candidates, rebuilt from it on
    restore; a candidate whose session grew or merged since is stale."""

    __slots__ = ("_close", "_grow", "_merge", "_new", "_operator", "_out", "_results", "_user_error", "ends",
                 "gap", "seq", "sessions")

    def __init__(self, operator, gap: float) -> None:
        self.gap = gap
        self.sessions = value_state(operator, "sessions")  # key -> [[start, end, acc]], by start
        self.ends: list = []  # heap of (end, start, sequence, key): fire candidates
        self.seq = count()
        self._new, self._grow, self._merge = operator._new, operator._grow, operator._merge
        self._results, self._out, self._user_error = operator._results, operator._out, operator._user_error
        # an operator whose session's results may be many (a join's pairs)
        # closes it to make them as they go on (`Windowing._close_window`)
        self._close = getattr(operator, "_close_session", None)
        self._operator = operator

    def add(self, port, batch, stamps, frontier, late):
        gap = self.gap
        sessions, ends, seq = self.sessions, self.ends, self.seq
        record = None
        try:
            for record, stamp in zip(batch, stamps):
                key = record[0]
                start, end = stamp, stamp + gap
                mine = sessions.get(key)
                # The open sessions this event touches, [s, e) overlapping
                # [stamp, stamp + gap): one run of `mine`, whose sessions are
                # disjoint (what an event touches merges) and sorted by start,
                # so by end too: found by bisection, not by reading every
                # session of the key (a key with 5,000 open, max_delay well
                # past the gap, cost ~0.3 ms an event).
                lo = hi = 0
                if mine:
                    hi = bisect_left(mine, end, key=_first)  # the sessions starting before `end`
                    lo = hi
                    while lo and stamp < mine[lo - 1][1]:
                        lo -= 1
                if lo == hi:
                    if end <= stamp:  # stamp + gap rounds to stamp: see TimeTooLarge
                        raise TimeTooLarge(stamp, f"Session({gap!r})")
                    if end <= frontier:
                        # (no empty list kept for its key: one per late event
                        # of a key without sessions stayed in the state for good)
                        late.append(record)
                        continue
                # merge what it bridges, oldest session first, then the event
                acc = _MISSING
                for s in mine[lo:hi] if mine else ():
                    start = min(start, s[0])
                    end = max(end, s[1])
                    acc = s[2] if acc is _MISSING else self._merge_accs(acc, s[2])
                new = self._new_acc(record[1], stamp, port, next(seq))
                acc = new if acc is _MISSING else self._merge_accs(acc, new)
                merged = [start, end, acc]
                if mine is None:
                    sessions[key] = [merged]
                else:
                    mine[lo:hi] = [merged]  # between its neighbours, which it does not touch
                heapq.heappush(ends, (end, start, next(seq), key))
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._user_error(exc, record) from exc

    def _new_acc(self, value, stamp, port, sequence):
        if self._merge is None:
            return _Values([(sequence, value, port)])
        return self._new(value, stamp, port)

    def _merge_accs(self, older, newer):
        if self._merge is None:
            older.values.extend(newer.values)
            return older
        return self._merge(older, newer)

    def fire(self, frontier: float, limit: int | None = None) -> bool:
        sessions, ends = self.sessions, self.ends
        out, results, close, operator = self._out, self._results, self._close, self._operator
        while ends and ends[0][0] <= frontier:
            if limit is not None and len(out) + operator._closed_count > limit:
                return True  # more to close: the operator closes them as the results go on
            end, start, _, key = heapq.heappop(ends)
            mine = sessions.get(key)
            if not mine:
                continue
            at = bisect_left(mine, start, key=_first)  # (starts are distinct: the sessions are disjoint)
            if at == len(mine) or mine[at][0] != start or mine[at][1] != end:
                continue  # stale: that session grew or merged since
            s = mine.pop(at)
            if not mine:
                del sessions[key]
            acc = s[2]
            if acc.__class__ is _Values:
                acc = self._from_values(key, acc.values)
            if close is not None:
                close(key, Window(start, end), acc)
            else:
                out.extend(results(key, Window(start, end), acc))
        return False

    def _from_values(self, key, values):
        values.sort(key=_first)  # arrival order, across merged sessions
        (_, value, port), *rest = values
        # The user's function runs here, when the session closes (on a
        # watermark): a failure names the record it was given, `(key,
        # value)`, as where a window's function runs as records come.
        try:
            acc = self._new(value, math.nan, port)
            for _, value, port in rest:
                acc = self._grow(acc, value, math.nan, port)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._user_error(exc, (key, value)) from exc
        return acc

    def sequence(self) -> int:
        return next(self.seq)

    def restored(self, sequence: int) -> None:
        # (a snapshot of an earlier version holds an empty list for each key
        # that a late event met: dropped, or kept for good)
        for key in [key for key, sessions in self.sessions.items() if not sessions]:
            del self.sessions[key]
        self.seq = count(sequence)
        self.ends = [(end, start, next(self.seq), key)
                     for key, sessions in self.sessions.items() for start, end, _ in sessions]
        heapq.heapify(self.ends)
