"""Clocks: where the kernel reads time.

Everything in the kernel that needs time (tick budgets, the stall detector,
`cooperate()`, later watermark idle timeouts and processing-time timers) takes
it from a clock object instead of calling `time` directly, so tests can swap in
a `VirtualClock` and assert exact schedules without sleeping.

A clock has two readings:

* `monotonic()`: seconds from an arbitrary origin, never going backwards; used
  for budgets and durations.
* `now()`: wall time in float seconds since the Unix epoch; the domain of event
  time and processing-time timers.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Protocol


class Clock(Protocol):
    """What the kernel asks of a clock (yours may be anything that has these)."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards."""

    def now(self) -> float:
        """Wall time, float seconds since the Unix epoch."""

    def timer(self, loop, delay: float, fn: Callable[[], None]):
        """Call `fn()` on `loop` once `delay` seconds of this clock have
        passed; returns a handle with `cancel()`."""


def check_clock(clock) -> None:
    """None (the system clock) or an object with a `Clock`'s methods.
    Checked when a run is planned: `clock=5` failed as an AttributeError
    in a kernel, and `clock=VirtualClock` (the class) only at the first
    reading, with a TypeError about a missing `self`."""
    if clock is None:
        return
    if isinstance(clock, type):
        raise ValueError(f"clock must be a clock object, got the class {clock.__name__}: "
                         f"pass an instance ({clock.__name__}())")
    missing = [name for name in ("monotonic", "now", "timer") if not callable(getattr(clock, name, None))]
    if missing:
        raise ValueError("clock must have monotonic(), now() and timer(loop, delay, fn) (kernel.Clock), "
                         f"got {clock!r}, which has no {', '.join(missing)}")


class SystemClock:
    """The real clock. `monotonic` is `time.perf_counter` itself (a C call),
    because the scheduler reads it after every activation."""

    __slots__ = ()

    monotonic = staticmethod(time.perf_counter)
    now = staticmethod(time.time)

    @staticmethod
    def timer(loop, delay: float, fn: Callable[[], None]):
        return loop.call_later(delay, fn)

    def __repr__(self) -> str:
        return "SystemClock()"


def _seconds(name: str, value) -> float:
    """A `VirtualClock`'s `start` or `epoch`: a finite number that float()
    takes (numpy's, a Fraction or a Decimal too, as before the check was
    made), not True or a str."""
    try:
        seconds = None if isinstance(value, (bool, str, bytes)) else float(value)
    except (TypeError, ValueError):
        seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"VirtualClock: {name} must be a finite number of seconds, got {value!r}")
    return seconds


class VirtualClock:
    """A clock that moves only when told to.

    `advance(dt)` moves both readings forward by `dt` seconds. Tests use it
    inside operators to stand for work that takes time, which makes tick
    budgets and fairness between task classes exact and instant.
    """

    __slots__ = ("_epoch", "_monotonic", "_sequence", "_timers")

    def __init__(self, start: float = 0.0, epoch: float = 1_700_000_000.0) -> None:
        self._monotonic = _seconds("start", start)
        self._epoch = _seconds("epoch", epoch)
        self._timers: list = []  # heap of [deadline, sequence, fn]
        self._sequence = itertools.count()

    def monotonic(self) -> float:
        return self._monotonic

    def now(self) -> float:
        return self._epoch + self._monotonic

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards (advance({seconds!r}))")
        if not seconds < math.inf:  # NaN or inf: every later reading would be NaN or inf
            raise ValueError(f"advance needs a finite number of seconds >= 0, got {seconds!r}")
        self._monotonic += seconds
        timers = self._timers
        while timers and timers[0][0] <= self._monotonic:
            _, _, fn = heapq.heappop(timers)
            if fn is not None:
                fn()

    def call_later(self, delay: float, fn) -> _VirtualTimer:
        """Call `fn()` once the clock has been advanced by `delay` seconds
        (from inside the `advance` that gets there; timers fire in deadline
        order, ties in the order they were set)."""
        if delay != delay:  # NaN: first in the heap for ever, no deadline ever reached (nor any after it)
            raise ValueError("a timer's delay must be a number of seconds, got nan")
        entry = [self._monotonic + max(delay, 0.0), next(self._sequence), fn]
        heapq.heappush(self._timers, entry)
        return _VirtualTimer(entry)

    def timer(self, loop, delay: float, fn: Callable[[], None]) -> _VirtualTimer:
        """`fn()` on `loop`'s next turn once the clock has been advanced by
        `delay` (the kernel's processing-time timers). Cancelled after the
        clock got there but before that turn, it does not run (as an
        asyncio timer handle: it ran)."""
        timer = None

        def due() -> None:
            if timer._entry[2] is not None:  # (not cancelled meanwhile)
                fn()

        timer = self.call_later(delay, lambda: loop.call_soon(due))
        return timer

    def __repr__(self) -> str:
        return f"VirtualClock(monotonic={self._monotonic!r})"


class _VirtualTimer:
    __slots__ = ("_entry",)

    def __init__(self, entry: list) -> None:
        self._entry = entry

    def cancel(self) -> None:
        self._entry[2] = None
