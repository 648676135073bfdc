"""The window classes that leave a process pickled, kept at this module path.

Pickle names a class by its module, so these stay here while the window
operators live in `operators/windows/`: a snapshot made by an earlier version
restores, a newer one can still be read by an earlier version, and kernels of
both versions in one cluster understand each other's records.

* `Window` is in every window result; results cross kernels by pickle (a
  namedtuple is not a plain tuple to msgpack) and may sit in a user's
  snapshotted state.
* `_Values` holds a session's raw values in the window operators' snapshots.
"""

from __future__ import annotations

import math
from typing import NamedTuple


class Window(NamedTuple):
    """An event-time window `[start, end)`. A tuple, so `json.dumps` and
    msgpack write it as `[start, end]`.

    >>> import json
    >>> w = Window(0.0, 2.5)
    >>> w.start, w.end, json.dumps(w)
    (0.0, 2.5, '[0.0, 2.5]')
    """

    start: float
    end: float

    @property
    def max_timestamp(self) -> float:
        """The event time of the window's result: the largest float below
        `end`, the last instant inside `[start, end)` (Flink's `end - 1` ms,
        for float seconds), so a result lands in the window that holds it
        when it is windowed again, and is never late for the watermark that
        closed its window.

        >>> Window(0.0, 2.0).max_timestamp < 2.0 <= Window(0.0, 2.0).max_timestamp + 1e-15
        True
        """
        return math.nextafter(self.end, -math.inf)

    def __repr__(self) -> str:
        return f"Window({self.start!r}, {self.end!r})"


class _Values:
    """A session's raw values as (arrival sequence, value, port), for
    aggregations without a merge: aggregated when the session closes."""

    __slots__ = ("values",)

    def __init__(self, values: list) -> None:
        self.values = values
