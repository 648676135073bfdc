"""`Distinct`: the first of equal `(key, value)` records, passed on at once.

On the kernel that owns the key (the facade keys a plain stream by the
record itself), each key's values seen so far are kept (keyed state, in
snapshots), so a record goes on only the first time, with its event time.

With `within=Tumbling(size)` a record is a duplicate only of one in the same
window (by event time), and each window's values are forgotten once the
watermark passes its end, so memory stays bounded on endless inputs. A
record whose window has ended already is late: dropped and counted, as
windows do (its window's values are gone, so passing it on would make the
output depend on when watermarks came).
"""

from __future__ import annotations

import heapq
import math

from kernel.state import value_state

from kernel.dataflow._errors import (
    PASSES_THROUGH,
    UNHASHABLE_RECORD,
    KernelError,
    OperatorError,
    is_unhashable,
)
from kernel.dataflow._operator import Operator, TimedBatch, rescale_fields

from ._calls import keyed_error
from .windows import Tumbling
from .windows._strategy import TIME_TOO_LARGE_HINT, TimeTooLarge, coarse_from


class _AnyNaN(float):
    """The NaN that `distinct()` keeps for every float NaN it has seen (alone
    or in a tuple): equal to every NaN, hashed alike in every process, and
    one object after a snapshot (pickled by name). A NaN equals nothing,
    not itself; a set matched a NaN object met again by identity, so a
    repeated NaN came out once on one kernel and once per arrival on
    several (an exchange makes a new object), two NaN objects always
    twice. Now every NaN is one value for `distinct()`, as pandas'
    drop_duplicates has it. (Its stable hash is a NaN's: keyed state cut
    by key group on a rescale stays where NaN records go.)"""

    __slots__ = ()

    def __eq__(self, other):
        return isinstance(other, float) and float.__ne__(other, other)  # (float's own: a NaN's)

    def __ne__(self, other):
        return not self.__eq__(other)

    def __hash__(self):
        return 0x7FF8

    def __reduce__(self):
        return "ANY_NAN"

    def __repr__(self):
        return "nan"


ANY_NAN = _AnyNaN("nan")


def _one_nan(value):
    """`value` with every float NaN in it (alone or in tuples, nested) as
    `ANY_NAN`: `value` itself when it holds none."""
    if isinstance(value, float):
        return ANY_NAN if value != value else value
    if isinstance(value, tuple):
        items = [_one_nan(item) for item in value]
        if any(new is not old for new, old in zip(items, value)):
            return tuple(items)
    return value


def check_within(within) -> None:
    if within is not None and not isinstance(within, Tumbling):
        raise TypeError(f"distinct(within=...) takes a Tumbling window (each record in one window), "
                        f"got {within!r}")


class Distinct(Operator):
    """Passes on the first `(key, value)` of its kind (per window with
    `within`); with `values_only`, only its value (`Stream.distinct`)."""

    #: set at build time: custom steps on the way that may drop event time
    time_hint: str | None = None

    def __init__(self, within: Tumbling | None = None, values_only: bool = False) -> None:
        check_within(within)
        self.within = within
        self.values_only = values_only
        self.late = 0

    def open(self, context):
        # without a window: key -> {values}; with one: window number -> {(key, value)}
        self.seen = value_state(self, "seen")
        self._frontier = -math.inf
        self._numbers: list = []  # heap of the window numbers in `seen`

    def on_epoch(self, epoch):
        return {"states": super().on_epoch(epoch), "frontier": self._frontier, "late": self.late}

    def restore(self, snapshot):
        super().restore(snapshot["states"])
        self._frontier, self.late = snapshot["frontier"], snapshot["late"]
        if self.within is not None:
            self._numbers = list(self.seen)
            heapq.heapify(self._numbers)

    def rescale(self, snapshots, owns):
        # with `within`: {window number: {(key, value), ...}}
        nested = ("seen",) if self.within is not None else ()
        return rescale_fields(snapshots, owns, self.context.index == 0, nested=nested,
                              states="states", frontier="min", late="sum_first")

    def on_batch(self, port, batch):
        if self.within is None:
            kept = self._first_ever(batch)
        else:
            kept = self._first_in_window(batch)
        if not kept:
            return
        values_only = self.values_only
        out = [batch[i][1] if values_only else batch[i] for i in kept]
        if batch.__class__ is TimedBatch:
            stamps = batch.timestamps
            out = TimedBatch(out, [stamps[i] for i in kept])
        self.emit(out)

    def _first_ever(self, batch) -> list[int]:
        seen = self.seen
        kept = []
        record = None
        try:
            for i, record in enumerate(batch):
                key, value = record
                values = seen.get(key)
                if values is None:
                    # (a miss: NaNs, equal to nothing, are looked for as ANY_NAN)
                    one = _one_nan(key)
                    if one is not key:
                        key, values = one, seen.get(one)
                    if values is None:
                        seen[key] = {_one_nan(value)}
                        kept.append(i)
                        continue
                if value in values:
                    continue
                one = _one_nan(value)  # (a miss: NaNs, equal to nothing, are looked for as ANY_NAN)
                if one is not value and one in values:
                    continue
                values.add(one)
                kept.append(i)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._error(exc, record) from exc
        return kept

    def _first_in_window(self, batch) -> list[int]:
        if batch.__class__ is not TimedBatch:
            raise KernelError(f"{self.name}: distinct(within=...) needs event time, but these records "
                              "carry no timestamps: give the source timestamp=..." + (self.time_hint or ""))
        size, seen, frontier = self.within.size, self.seen, self._frontier
        coarse = coarse_from(size)  # (|stamp| from there: too_coarse)
        kept = []
        record = None
        try:
            for i, (record, stamp) in enumerate(zip(batch, batch.timestamps)):
                j = math.floor(stamp / size)
                if j * size > stamp:  # the float quotient rounded across a boundary
                    j -= 1
                elif (j + 1) * size <= stamp:
                    j += 1
                end = (j + 1) * size
                # no window can hold it (its end rounds to its start), or floats there are
                # further apart than the size (windows of another size): as the window
                # aggregates say (`TumblingWindows._enter`, `too_coarse`), not passed on twice
                if not stamp < end or not -coarse < stamp < coarse:
                    raise TimeTooLarge(stamp, repr(self.within))
                if end <= frontier:
                    self.late += 1
                    continue
                pairs = seen.get(j)
                if pairs is None:
                    pairs = seen[j] = set()
                    heapq.heappush(self._numbers, j)
                if record in pairs:
                    continue
                one = _one_nan(record)  # (a miss: NaNs, equal to nothing, are looked for as ANY_NAN)
                if one is not record and one in pairs:
                    continue
                pairs.add(one)
                kept.append(i)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._error(exc, record) from exc
        return kept

    def _error(self, exc: Exception, record) -> OperatorError:
        """An unhashable key is the key's fault (`keyed_error`); an
        unhashable value, where only values go on (`Stream.distinct`: the
        record itself, keyed where it is after a window), is the record's.
        A time too large for the window is the record's time's (it was
        late for an equal time: "b" after "a" at 1.7e18, dropped)."""
        if isinstance(exc, TimeTooLarge):
            shown = record[1] if self.values_only else record  # (a stream's record is keyed by itself)
            return OperatorError.wrap(self.name, "window", exc, record=shown, hint=TIME_TOO_LARGE_HINT)
        # (Stream.distinct keys each record by itself: an unhashable record
        # makes an unhashable key too, and was said to be the key's fault, the
        # pair shown, "the function given to key_by" blamed)
        if self.values_only and isinstance(record, tuple) and len(record) == 2 \
                and is_unhashable(record[1]):
            return OperatorError.wrap(self.name, "hash(record)", exc, record=record[1],
                                      hint=UNHASHABLE_RECORD)
        return keyed_error(self.name, "hash(value)", exc, record)

    def on_watermark(self, watermark):
        self._frontier = watermark
        if self.within is None:
            return
        size, numbers, seen = self.within.size, self._numbers, self.seen
        while numbers and (numbers[0] + 1) * size <= watermark:
            seen.pop(heapq.heappop(numbers), None)

    def on_end(self):
        if self.late:
            self.context.logger.warning("%s: dropped %d late records (their window had ended)",
                                        self.name, self.late, extra={"step": self.name})

    def result(self):
        return {"late": self.late} if self.late else None
