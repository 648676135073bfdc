"""What a window strategy is: the per-operator logic of one kind of window.

A window operator (`WindowAggregate`, `WindowJoin`, `WindowMerge`) knows
what goes *into* a window (an aggregation's accumulator, a join's two
sides) and when time moves (its frontier); the strategy its spec builds when
it opens (`WindowKind.strategy`) knows *which* windows there are: it keeps
them, in keyed state registered on the operator so that the operator's
snapshot takes them, and owns the loops over a batch's records, so the kind
is decided once per operator, and the hot loops bind what they call once
per batch.

The strategy reaches back into its operator for what goes into a window,
read once when it is built:

* `_new(value, stamp, port) -> acc`, `_grow(acc, value, stamp, port) -> acc`
  and `_merge(a, b) -> acc` (None: the values are kept and aggregated when
  the window closes), and `_adds`: "sum" or "count" when the accumulator
  is a plain running total (the tumbling loop inlines it), else None;
* what a closed window emits: `_emit_window(j, {key: acc})` for windows by
  number (the operator makes the results when it knows how many: `_closed`),
  `_results(key, window, acc)` (a list of records, put in `_out`) for
  sessions;
* `_user_error(exc, record)`: the error that names a failing record.
"""

from __future__ import annotations

import math

TIME_TOO_LARGE_HINT = ("timestamps are float seconds since the epoch: divide one in milliseconds, "
                       "microseconds or nanoseconds (time.time_ns() / 1e9)")


class TimeTooLarge(ValueError):
    """A timestamp so large that float seconds cannot hold a window around
    it: its window's end rounds to its start (seconds are 256 apart at
    1.7e18, a time in nanoseconds taken for seconds), or floats there are
    further apart than the windows' step, so windows one step apart round
    to the same or distorted bounds (0.25 s apart at 1.7e15, microseconds
    taken for seconds: `Sliding(1.0, 0.1)` gave one window twice, and
    windows of 0.75 and 1.25 s). Raised by a strategy instead of putting
    the record in no window, an empty one or a wrong one; the operator
    names the record (`Windowing._user_error`)."""

    def __init__(self, stamp: float, window: str) -> None:
        super().__init__(f"timestamp {stamp!r} is too large for {window} windows: float seconds are "
                         f"{math.ulp(stamp)!r} apart there, so no window [start, end) of that size "
                         "can hold it")


def too_coarse(stamp: float, step: float) -> bool:
    """Whether floats near `stamp` are further apart than `step`: windows
    starting every `step` seconds cannot be told apart there."""
    return math.ulp(stamp) > step


def coarse_from(step: float) -> float:
    """The smallest magnitude from which `too_coarse(stamp, step)` holds:
    a loop over every record compares with it instead of calling
    math.ulp a record (floats in [2**e, 2**(e+1)) are 2**(e-52) apart)."""
    return math.ldexp(1.0, math.frexp(step)[1] + 52)


class WindowStrategy:
    """The interface of a window kind's per-operator logic (see the module)."""

    __slots__ = ()

    def add(self, port: int, batch: list, stamps: list, frontier: float, late: list) -> None:
        """Put each record of `batch` (timestamps `stamps`) in its windows.
        Records whose windows all end at or before `frontier` (emitted
        already) are appended to `late` instead."""
        raise NotImplementedError

    def fire(self, frontier: float, limit: int | None = None) -> bool:
        """Emit, through the operator, and forget every window that ends at
        or before `frontier`; or, given a `limit`, stop once the operator's
        `_out` holds more results than that, and return True if windows
        that `frontier` closes are left (the operator fires again as its
        results go on)."""
        raise NotImplementedError

    def sequence(self) -> int:
        """The arrival counter, for the operator's snapshot ("sequence")."""
        raise NotImplementedError

    def restored(self, sequence: int) -> None:
        """The keyed state was put back from a snapshot: rebuild what is
        derived from it, and resume the arrival counter at `sequence`."""
        raise NotImplementedError
