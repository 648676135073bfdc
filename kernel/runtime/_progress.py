"""Progress: an operator's input frontier over its channels, as pure data.

Each input channel of an operator instance carries, in band after its data,
watermarks (a promise: nothing earlier is still to come on this channel),
`IDLE` (nothing is coming for now: do not wait for me) and end of input.
`Frontier` turns what arrived on each channel into the instance's input
frontier, and says what that changes for the instance, which enacts it
(fires timers, calls handlers, forwards downstream): this module takes
timestamps and channel numbers only, never a kernel, an operator or a
channel object, so it is tested alone against a brute-force model
(tests/kernel/test_progress.py), as timely keeps its progress tracking.

The rules:

* A channel's watermark only moves forward; an ended channel's is the top
  of the order (+inf).
* The frontier is the meet (for floats: the minimum) of the watermarks of
  the open channels that are not idle, or +inf once every channel ended.
* With every open channel idle, nothing holds the frontier back but the
  idle channels' own watermarks, so it moves to their join (the maximum;
  Flink's watermark valve), and the instance is idle itself: it says so
  downstream. A channel whose watermark reached the top (+inf: a source
  says so just before its end) is done, as an ended one: with the others
  idle, every open channel that may still send is idle (its +inf was the
  frontier, which closed every window on the idle channels' later data).
  A watermark on an idle channel makes it active again (and the instance,
  which then announces its frontier again).
* The frontier never moves back: a candidate below it changes nothing.

Timestamps are ordered by an `Order`: floats today; loops will need pairs
(outer time, round) under the product order, whose meet and join are taken
field by field, which is why the frontier is written with meet, join and a
strict `less`, never with `min`, `max` and `<` directly.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple


class Order(NamedTuple):
    """A lattice of timestamps: its least and greatest element, the meet
    (greatest lower bound) and join (least upper bound) of several, and
    whether one is strictly below another."""

    bottom: Any
    top: Any
    meet: Callable[[Iterable], Any]
    join: Callable[[Iterable], Any]
    less: Callable[[Any, Any], bool]


SCALAR = Order(-math.inf, math.inf, min, max, operator.lt)


class Change(NamedTuple):
    """What one progress event changed for the instance, to enact in this
    order: announce the frontier again (`reactivated`: the instance was idle
    and an input is active again; the frontier before any advance), move it
    (`advanced`: fire due timers, `on_watermark`, forward it), then, when
    every open input is idle after the event (`all_idle`), `on_idle` (what
    the operator holds for others goes out: data may have come since the
    last time), and forward IDLE if the instance had not said so yet
    (`went_idle`)."""

    reactivated: Any = None
    advanced: Any = None
    all_idle: bool = False
    went_idle: bool = False


class Frontier:
    """The input frontier of one operator instance (see the module docstring).

    `observe_watermark`, `observe_idle` and `observe_end` return a `Change`,
    or None when nothing changed for the instance. `ended` is true once
    every channel has ended (then the instance's input is over)."""

    __slots__ = ("_bottom", "_idle_count", "_join", "_less", "_meet", "_top", "_topped", "closed", "idle",
                 "idle_channels", "marks", "open", "value")

    def __init__(self, order: Order = SCALAR) -> None:
        self.value = order.bottom  # the frontier
        self.marks: list = []  # each channel's watermark
        self.idle_channels: list[bool] = []
        self.closed: set[int] = set()  # channels whose end has come
        self.open = 0
        self.idle = False  # every open channel is idle: the instance has said IDLE
        self._idle_count = 0
        self._topped = 0  # open channels whose watermark is the top: done, for idleness
        self._meet, self._join, self._less = order.meet, order.join, order.less
        self._bottom, self._top = order.bottom, order.top

    def add_channel(self) -> int:
        self.marks.append(self._bottom)
        self.idle_channels.append(False)
        self.open += 1
        return len(self.marks) - 1

    @property
    def ended(self) -> bool:
        return self.open == 0 and bool(self.marks)

    # -- events -------------------------------------------------------------------

    def observe_watermark(self, channel: int, watermark) -> Change | None:
        reactivated = None
        if self.idle_channels[channel]:
            self.idle_channels[channel] = False
            self._idle_count -= 1
            if self.idle:  # active again: downstream must count this input again
                self.idle = False
                reactivated = self.value
        advanced = None
        if self._less(self.marks[channel], watermark):
            self.marks[channel] = watermark
            if not self._less(watermark, self._top):
                self._topped += 1
                if self._idle_count and self._idle_count == self._live():  # the rest is idle
                    idle = self._all_idle()
                    return Change(reactivated, idle.advanced, True, idle.went_idle)
            advanced = self._advance(self._active_meet())
        if reactivated is None and advanced is None:
            return None
        return Change(reactivated, advanced)

    def observe_idle(self, channel: int) -> Change | None:
        if self.idle_channels[channel] or not self._less(self.marks[channel], self._top):
            return None  # already idle, or done (at +inf, or ended)
        self.idle_channels[channel] = True
        self._idle_count += 1
        if self._idle_count == self._live():
            return self._all_idle()
        advanced = self._advance(self._active_meet())
        return None if advanced is None else Change(advanced=advanced)

    def observe_end(self, channel: int) -> Change | None:
        if channel in self.closed:
            return None
        if self.idle_channels[channel]:
            self.idle_channels[channel] = False
            self._idle_count -= 1
        if not self._less(self.marks[channel], self._top):
            self._topped -= 1
        self.marks[channel] = self._top
        self.closed.add(channel)
        self.open -= 1
        if self._live() and self._idle_count == self._live():
            return self._all_idle()
        advanced = self._advance(self._active_meet())
        return None if advanced is None else Change(advanced=advanced)

    # -- snapshots ----------------------------------------------------------------

    def snapshot(self) -> tuple:
        """What a snapshot keeps (idleness is not kept: a resumed run starts
        every channel active, and they go idle again as they did)."""
        return self.value, list(self.marks), sorted(self.closed)

    def restore(self, value, marks: list, closed) -> None:
        self.value = value
        self.marks[:] = marks
        self.closed = set(closed)
        self.open = len(marks) - len(self.closed)
        self.idle_channels[:] = [False] * len(marks)
        self._topped = sum(1 for channel, mark in enumerate(marks)
                           if channel not in self.closed and not self._less(mark, self._top))
        self._idle_count = 0
        self.idle = False

    # -- internals ----------------------------------------------------------------

    def _live(self) -> int:
        """The open channels below the top: those that may still send data."""
        return self.open - self._topped

    def _all_idle(self) -> Change:
        idle_marks = [mark for mark, idle in zip(self.marks, self.idle_channels) if idle]
        advanced = self._advance(self._join(idle_marks))
        went_idle = not self.idle
        self.idle = True
        return Change(advanced=advanced, all_idle=True, went_idle=went_idle)

    def _active_meet(self):
        if not self._idle_count:
            return self._meet(self.marks)
        return self._meet(mark for mark, idle in zip(self.marks, self.idle_channels) if not idle)

    def _advance(self, candidate):
        if self._less(self.value, candidate):
            self.value = candidate
            return candidate
        return None
