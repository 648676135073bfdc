"""`WindowJoin`: the inner join of two keyed streams per key and window."""

from __future__ import annotations

from itertools import repeat

from .._nan_keys import holds_nan, may_hold_nan
from ._windowing import LATE_BY_SIDE, Windowing


class WindowJoin(Windowing):
    """Inner join of two keyed streams (ports 0 and 1) per key and window:
    `(key, window, (left, right))` for every pair, in arrival order. A
    window's accumulator is its two sides' values, `([lefts], [rights])`.
    A key that holds a float NaN pairs with nothing (`_nan_keys`)."""

    def __init__(self, window, late: bool = False) -> None:
        super().__init__(window, late)

    def on_batch(self, port, batch):
        # late values are found (and flushed) batch by batch: these are this side's
        self._late_batch = LATE_BY_SIDE[port]
        super().on_batch(port, batch)

    def _new(self, value, stamp, port):
        sides: tuple[list, list] = ([], [])
        sides[port].append(value)
        return sides

    def _grow(self, acc, value, stamp, port):
        acc[port].append(value)
        return acc

    @staticmethod
    def _merge(a, b):
        a[0].extend(b[0])
        a[1].extend(b[1])
        return a

    _adds = None

    def _results(self, key, window, acc):
        lefts, rights = acc
        return [(key, window, (left, right)) for left in lefts for right in rights]

    def _emit_window(self, j, accs: dict) -> None:
        # one result per pair: a hot key's may be many (made as they go on)
        _drop_nan_keys(accs)
        self._close_window(self._windows.window(j), accs,
                           sum(len(lefts) * len(rights) for lefts, rights in accs.values()))

    def _close_session(self, key, window, acc) -> None:
        # a session's pairs, made as they go on too
        lefts, rights = acc
        if lefts and rights and holds_nan(key):
            return
        self._close_window(window, {key: acc}, len(lefts) * len(rights))

    def _make_window(self, window, accs: dict, out: list, stamps: list) -> None:
        made = len(out)
        for key, acc in accs.items():
            out.extend(self._results(key, window, acc))
        stamps.extend(repeat(window.max_timestamp, len(out) - made))

    def _results_of(self, window, accs: dict):
        return ((key, window, (left, right))
                for key, (lefts, rights) in accs.items() for left in lefts for right in rights)

    def _function(self):
        return "join"


def _drop_nan_keys(accs: dict) -> None:
    """Takes out of a closed window's `{key: acc}` the keys that hold a NaN
    and would pair (one NaN object on both sides): looked at per key with
    values on both sides as the window closes, not per record; the usual
    keys (str, int, tuples of them) all at once, by type (a pass per key in
    Python cost a windowed join of distinct keys 15-25%)."""
    if not may_hold_nan(accs):
        return
    for key in [key for key, (lefts, rights) in accs.items() if lefts and rights and holds_nan(key)]:
        del accs[key]
