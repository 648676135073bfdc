"""Event time at the sources: timestamps, watermarks, idleness.

`EventTimeSource` wraps any `Source`: every batch it emits becomes a
`TimedBatch` (the records unchanged, their timestamps beside them) and, after
the batch, the source's watermark moves to the largest timestamp seen minus
`max_delay` (bounded out-of-orderness). A source that emits nothing for
`idle_timeout` seconds of the kernel's clock is marked idle, so it does not
hold back the watermark of operators that also read other sources or other
kernels; its next batch makes it active again. At the end of a bounded input
the watermark goes to +inf (the kernel does that for every source).

Idle means *had nothing when asked*, not *emitted nothing*: a source the
kernel does not poll (its sources are paused while the exchange's rings are
full, or its turn has not come) may have data waiting, and taking it for
idle would let the windows downstream close ahead of that data, which then
arrives late. So a period without output makes the source idle only if
nothing woke it since its last poll (a wake says data came), and either that
poll returned None (it waits for a wake) or it was polled during the period
(a source that asks to be polled again and is not was held back).

Timestamps are float seconds since the epoch; a timestamp function may return
an `int`, a `float`, or a `datetime` (converted; a naive datetime is taken as
UTC, so a pipeline means the same on every machine).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Callable
from itertools import repeat

from kernel.dataflow._arity import check_arity
from kernel.dataflow._errors import PASSES_THROUGH, OperatorError
from kernel.dataflow._operator import Source, TimedBatch

from ._accessors import accessor
from ._calls import call_each

_UTC = _dt.UTC
_NUMBERS = (float, int)


def as_seconds(value) -> float:
    """A timestamp as float seconds since the epoch."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_UTC)
        return value.timestamp()
    if isinstance(value, _NUMBERS) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"a timestamp must be a number of seconds or a datetime, not {type(value).__name__}")


TIMESTAMP_HINT = ("a timestamp must be a number of seconds or a datetime: a finite int or float, "
                  "seconds since the epoch")


def _usable(value) -> bool:
    try:
        return math.isfinite(as_seconds(value))
    except PASSES_THROUGH:
        raise
    except BaseException:  # (a datetime subclass's timestamp() may raise anything)
        return False


def _stamps(values: list) -> list:
    """Float seconds for the timestamp function's results (numbers stay as
    they are in the common case: one C-level pass to check)."""
    kinds = set(map(type, values))
    if kinds <= {float}:
        return values
    if kinds <= {float, int}:
        return list(map(float, values))
    return list(map(as_seconds, values))


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # True is no number of seconds


def check_event_time(timestamp, max_delay, idle_timeout) -> None:
    if timestamp is not None and not callable(timestamp):
        raise TypeError(f"timestamp must be a function of the record, got {timestamp!r}")
    if timestamp is not None:
        check_arity(timestamp, 1, "timestamp", "one record")
    if not _number(max_delay) or not max_delay >= 0 or math.isinf(max_delay):
        raise ValueError(f"max_delay must be a finite number of seconds >= 0, got {max_delay!r}")
    if idle_timeout is not None and (not _number(idle_timeout) or not idle_timeout > 0):
        raise ValueError(f"idle_timeout must be a number of seconds > 0 or None, got {idle_timeout!r}")
    if timestamp is None and max_delay:
        raise ValueError("max_delay needs timestamp=: without timestamps there is no event time")


class EventTimeSource(Source):
    """`inner`'s batches with event timestamps `timestamp(record)`."""

    def __init__(self, inner: Source, timestamp, max_delay: float = 0.0, idle_timeout=None) -> None:
        check_event_time(timestamp, max_delay, idle_timeout)
        self.inner = inner
        self.timestamp = timestamp
        self._timestamp_fast = accessor(timestamp)  # a field read in C where it is one (_accessors)
        self.max_delay = float(max_delay)
        self.idle_timeout = idle_timeout
        self.task_class = inner.task_class

    def open(self, context):
        inner = self.inner
        inner.name = self.name
        inner.context = context
        inner.emit = self._emit_timed
        inner.wake = self._inner_woke
        inner.advance_watermark = self.advance_watermark
        inner.mark_idle = self.mark_idle
        inner.schedule = self.schedule
        self._max_seen = -math.inf
        # since the last idle check: emitted a batch / was polled
        self._emitted = self._polled = False
        # since the last poll: woken (True at first: the kernel owes it its
        # first poll) / the poll asked to be polled again
        self._woken = True
        self._again = False
        self._idle_timer = None
        inner.open(context)
        if self.idle_timeout is not None:
            self._idle_timer = context.kernel.call_later(self.idle_timeout, self._check_idle)

    def poll(self):
        self._polled = True
        self._woken = False  # a wake() during the poll sets it again
        self.inner.records_wanted = self.records_wanted
        more = self.inner.poll()
        self._again = bool(more)
        if more is False and self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        return more

    def _inner_woke(self) -> None:
        # The inner source has something to do (a reader task filled its
        # buffer): until a poll finds nothing, it is not idle.
        self._woken = True
        self.wake()

    def result(self):
        return self.inner.result()

    def on_epoch(self, epoch):
        return {"inner": self.inner.on_epoch(epoch), "max_seen": self._max_seen}

    def restore(self, snapshot):
        self.inner.restore(snapshot["inner"])
        self._max_seen = snapshot["max_seen"]

    @staticmethod
    def of_inner(check: Callable[[list, object], str | None]) -> Callable[[list, object], str | None]:
        """`check`, a wrapped source's `Node.cut_on_resume`, given the wrapped
        source's own snapshots (inside this one's)."""
        def checked(snapshots: list, recorded: object) -> str | None:
            return check([s if s == Source.ENDED else s["inner"] for s in snapshots], recorded)
        return checked

    def rescale(self, snapshots, owns):
        # the lowest timestamp seen is the safe one: no event is late for it
        live = [s for s in snapshots if s != self.ENDED]
        inner = [self.ENDED if s == self.ENDED else s["inner"] for s in snapshots]
        return {"inner": self.inner.rescale(inner, owns),
                "max_seen": min((s["max_seen"] for s in live), default=-math.inf)}

    def _emit_timed(self, batch: list) -> None:
        if not batch:
            return
        values = call_each(self.name, self.timestamp, batch, self._timestamp_fast)
        try:
            stamps = _stamps(values)
        except PASSES_THROUGH:
            raise
        except BaseException:  # not a number, an int too large for a float, a timestamp() that raised
            stamps = None
        # A NaN or an infinity would break the windows downstream much later
        # (NaN compares false with everything): refused here, naming the
        # record. One C-level pass finds out: the float sum of finite
        # timestamps is finite (unless it overflows: then each is checked).
        if stamps is None or not math.isfinite(sum(stamps)):
            self._refuse_timestamps(batch, values)
        newest = max(stamps)
        self.emit(TimedBatch(batch, stamps))
        self._emitted = True
        if newest > self._max_seen:
            self._max_seen = newest
        self.advance_watermark(self._max_seen - self.max_delay)

    def _refuse_timestamps(self, batch: list, values: list) -> None:
        """Raise for the first record whose timestamp is not a finite number
        or a datetime (returns when there is none: finite stamps whose sum
        overflowed)."""
        for record, value in zip(batch, values):
            if not _usable(value):
                raise OperatorError.returned(self.name, self.timestamp, value, record=record,
                                             hint=TIMESTAMP_HINT)

    def _check_idle(self) -> None:
        # Woken and not polled since, or asked to be polled again and not
        # polled all period: the kernel held the source back (backpressure,
        # a long tick), and it may have data.
        if not (self._emitted or self._woken) and (self._polled or not self._again):
            self.mark_idle()
        self._emitted = self._polled = False
        self._idle_timer = self.context.kernel.call_later(self.idle_timeout, self._check_idle)


# -- carrying timestamps through record-at-a-time operators ------------------------


def same_times(out: list, batch: list) -> list:
    """`out` (one record per record of `batch`) with `batch`'s timestamps."""
    if batch.__class__ is TimedBatch:
        return TimedBatch(out, batch.timestamps)
    return out


def repeated_times(out: list, batch: TimedBatch, counts) -> TimedBatch:
    """`out` made of `counts[i]` records for record i of `batch`."""
    stamps: list = []
    extend = stamps.extend
    for stamp, count in zip(batch.timestamps, counts):
        extend(repeat(stamp, count))
    return TimedBatch(out, stamps)
