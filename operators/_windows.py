"""Event-time windows over keyed streams, and windowed joins.

`Tumbling(size)`, `Sliding(size, step)` and `Session(gap)` say which windows
an event belongs to; `WindowAggregate` keeps one accumulator per key and
window and emits `(key, window, result)` once the input watermark passes the
window's end; `WindowJoin` pairs the two sides' values of a key and window.

Conventions (the tests' brute-force references use the same ones):

* A window is half-open, `[start, end)`. A watermark `w` promises that no
  more events with a timestamp below `w` will come, so a window is complete,
  and emitted, once the input watermark reaches its end (`w >= end`).
* Tumbling windows start at multiples of `size`; sliding windows at
  multiples of `step` (an event is in every window with
  `start <= t < start + size`). A session starts at its first event and ends
  at its last event plus `gap`; an event joins a session when it comes less
  than `gap` after the session's previous event, or less than `gap` before
  its first, and an event that bridges two sessions merges them.
* An event is late when every window it belongs to has been emitted already
  (for sliding windows: it still counts in those of its windows that are
  open). Late events are dropped and counted, or, with `late=True`, passed
  on in `LateBatch`es that the facade routes to a side stream.
* Results of one watermark step come out by window end, then window start,
  then key in first-seen order. `fold` and `reduce` see a window's values in
  arrival order; `collect` gives them in timestamp order (ties in arrival
  order).
"""

from __future__ import annotations

import heapq
import math
from itertools import count
from operator import itemgetter
from typing import NamedTuple

from kernel.state import map_state, value_state

from kernel.dataflow._errors import KernelError, OperatorError
from kernel.dataflow._operator import Operator, TimedBatch

from ._calls import emit_in_batches, keyed_error

_first = itemgetter(0)


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

    def __repr__(self) -> str:
        return f"Window({self.start!r}, {self.end!r})"


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class Tumbling:
    """Back-to-back windows of `size` seconds: `[k*size, (k+1)*size)`.

    >>> from kernel import Dataflow, run
    >>> from operators import Tumbling
    >>> flow = Dataflow()
    >>> events = flow.from_iterable([("k", t) for t in (0.5, 1.5, 1.9, 4.0)], timestamp=lambda e: e[1])
    >>> out = events.key_by(lambda e: e[0]).window(Tumbling(2.0)).count().collect()
    >>> run(flow)
    >>> [(w.start, w.end, n) for _, w, n in out.items]
    [(0.0, 2.0, 3), (4.0, 6.0, 1)]
    """

    __slots__ = ("size",)

    def __init__(self, size: float) -> None:
        self.size = _positive("Tumbling size", size)

    def __repr__(self) -> str:
        return f"Tumbling({self.size!r})"


class Sliding:
    """Windows of `size` seconds starting every `step` seconds (at multiples
    of `step`); an event is in about `size / step` of them.

    >>> from kernel import Dataflow, run
    >>> from operators import Sliding
    >>> flow = Dataflow()
    >>> events = flow.from_iterable([("k", t) for t in (0.5, 1.5)], timestamp=lambda e: e[1])
    >>> out = events.key_by(lambda e: e[0]).window(Sliding(2.0, 1.0)).count().collect()
    >>> run(flow)
    >>> [(w.start, w.end, n) for _, w, n in out.items]
    [(-1.0, 1.0, 1), (0.0, 2.0, 2), (1.0, 3.0, 1)]
    """

    __slots__ = ("size", "step")

    def __init__(self, size: float, step: float) -> None:
        self.size = _positive("Sliding size", size)
        self.step = _positive("Sliding step", step)

    def __repr__(self) -> str:
        return f"Sliding({self.size!r}, {self.step!r})"


class Session:
    """Per-key bursts of activity separated by at least `gap` seconds: a
    session runs from its first event to its last event plus `gap`.

    >>> from kernel import Dataflow, run
    >>> from operators import Session
    >>> flow = Dataflow()
    >>> events = flow.from_iterable([("k", t) for t in (0.0, 0.5, 0.9, 5.0)], timestamp=lambda e: e[1])
    >>> out = events.key_by(lambda e: e[0]).window(Session(1.0)).count().collect()
    >>> run(flow)
    >>> [(w.start, w.end, n) for _, w, n in out.items]
    [(0.0, 1.9, 3), (5.0, 6.0, 1)]
    """

    __slots__ = ("gap",)

    def __init__(self, gap: float) -> None:
        self.gap = _positive("Session gap", gap)

    def __repr__(self) -> str:
        return f"Session({self.gap!r})"


def check_window(window) -> None:
    if not isinstance(window, (Tumbling, Sliding, Session)):
        raise TypeError(f"a window must be Tumbling, Sliding or Session, got {window!r}")


class _Aligned:
    """Tumbling and sliding windows by number: window `j` is
    `[j * step, end(j))`, where `end(j)` is `(j + m) * step` when the size is
    `m` steps (tumbling: m = 1), so consecutive windows tile exactly in
    floats (`5 * 0.1 + 0.1` is not `6 * 0.1`), else `j * step + size`.
    Membership is decided by these same numbers, so every event lands in the
    windows that hold it by the predicate `start <= t < end`."""

    __slots__ = ("size", "span", "step")

    def __init__(self, size: float, step: float) -> None:
        self.size, self.step = size, step
        span = round(size / step)
        self.span = span if span >= 1 and span * step == size else None

    def start(self, j: int) -> float:
        return j * self.step

    def end(self, j: int) -> float:
        return (j + self.span) * self.step if self.span is not None else j * self.step + self.size

    def last(self, t: float) -> int:
        """The largest j with start(j) <= t."""
        j = math.floor(t / self.step)
        if j * self.step > t:
            j -= 1
        elif (j + 1) * self.step <= t:
            j += 1
        return j

    def window(self, j: int) -> Window:
        return Window(self.start(j), self.end(j))


class LateBatch(list):
    """Late records, passed on beside a window's results when `late=True`."""

    __slots__ = ()


# -- aggregations: how a window's accumulator grows -------------------------------


class Aggregation:
    """`create(value)` starts an accumulator, `add(acc, value)` grows it,
    `merge(a, b)` joins two when sessions merge (None: a session keeps its
    raw values and aggregates them in arrival order when it closes, which
    holds more memory but needs nothing of the function), `result(acc)` is
    what is emitted."""

    name = "aggregation"
    function = None  # the user's function, named in errors

    def create(self, value, stamp, port=0):
        raise NotImplementedError

    def add(self, acc, value, stamp, port=0):
        raise NotImplementedError

    merge = None

    def result(self, acc):
        return acc


class CountAggregation(Aggregation):
    name = "count"

    def create(self, value, stamp, port=0):
        return 1

    def add(self, acc, value, stamp, port=0):
        return acc + 1

    @staticmethod
    def merge(a, b):
        return a + b


class SumAggregation(Aggregation):
    """No merge: `+` need not be commutative (str, list) nor exact in any
    order (float), so merged sessions add their values in arrival order."""

    name = "sum"

    def create(self, value, stamp, port=0):
        return value

    def add(self, acc, value, stamp, port=0):
        return acc + value


class ReduceAggregation(Aggregation):
    """No merge, as for sum: merged sessions reduce their values in arrival
    order, so `fn` need not be commutative."""

    name = "reduce"

    def __init__(self, fn) -> None:
        if not callable(fn):
            raise TypeError(f"reduce needs a callable, got {fn!r}")
        self.function = fn

    def create(self, value, stamp, port=0):
        return value

    def add(self, acc, value, stamp, port=0):
        return self.function(acc, value)


class FoldAggregation(Aggregation):
    """No merge: for sessions the values are kept (in arrival order) and
    folded when the session is emitted."""

    name = "fold"

    def __init__(self, init, fn) -> None:
        if not callable(fn):
            raise TypeError(f"fold needs a callable, got {fn!r}")
        self.init = init if callable(init) else (lambda: init)
        self.function = fn

    def create(self, value, stamp, port=0):
        return self.function(self.init(), value)

    def add(self, acc, value, stamp, port=0):
        return self.function(acc, value)


class CollectAggregation(Aggregation):
    """The window's values, in timestamp order (ties in arrival order)."""

    name = "collect"

    def create(self, value, stamp, port=0):
        return [(stamp, value)]

    def add(self, acc, value, stamp, port=0):
        acc.append((stamp, value))
        return acc

    @staticmethod
    def merge(a, b):
        return a + b

    def result(self, acc):
        acc.sort(key=_first)
        return [value for _, value in acc]


class _Values:
    """A session's raw values as (arrival sequence, value, port), for
    aggregations without a merge: aggregated when the session closes."""

    __slots__ = ("values",)

    def __init__(self, values: list) -> None:
        self.values = values


# -- the window operator ------------------------------------------------------------


class _Windowing(Operator):
    """What window aggregates and joins share: timestamps in, windows kept
    per key, results emitted as the watermark passes, late events out."""

    def __init__(self, window, late: bool) -> None:
        check_window(window)
        self.window = window
        self.route_late = late
        self.late = 0

    def open(self, context):
        self._frontier = -math.inf
        self._out: list = []
        self._late_out: list = []
        window = self.window
        # The windows live in keyed state (snapshots take them); the heaps
        # that order them are rebuilt from it on restore.
        if isinstance(window, Session):
            self._sessions = value_state(self, "sessions")  # key -> [[start, end, acc]], by start
            self._ends: list = []  # heap of (end, start, sequence, key): fire candidates
            self._seq = count()
        else:
            step = window.size if isinstance(window, Tumbling) else window.step
            self._aligned = _Aligned(window.size, step)
            self._open = map_state(self, "windows")  # window number -> {key: acc}
            self._numbers: list = []  # heap of the window numbers in `_open`

    def on_epoch(self, epoch):
        sequence = next(self._seq) if isinstance(self.window, Session) else 0
        return {"states": super().on_epoch(epoch), "frontier": self._frontier, "late": self.late,
                "sequence": sequence}

    def restore(self, snapshot):
        super().restore(snapshot["states"])
        self._frontier, self.late = snapshot["frontier"], snapshot["late"]
        if isinstance(self.window, Session):
            self._seq = count(snapshot["sequence"])
            self._ends = [(end, start, next(self._seq), key)
                          for key, sessions in self._sessions.items() for start, end, _ in sessions]
            heapq.heapify(self._ends)
        else:
            self._numbers = list(self._open)
            heapq.heapify(self._numbers)

    # subclasses: _new(value, stamp, port) -> acc, _grow(acc, value, stamp, port) -> acc,
    # _merge(a, b) -> acc, _results(key, window, acc) -> list of output records

    def _stamps(self, batch):
        if batch.__class__ is not TimedBatch:
            raise KernelError(
                f"{self.name}: windows need event time, but these records carry no timestamps: "
                "give the source timestamp=... (from_iterable(data, timestamp=fn)), and keep the "
                "path to the window on built-in operators (a custom operator must emit "
                "TimedBatch(out, batch.timestamps) to pass them on)"
            )
        return batch.timestamps

    def on_batch(self, port, batch):
        stamps = self._stamps(batch)
        if isinstance(self.window, Session):
            self._add_to_sessions(port, batch, stamps)
        elif isinstance(self.window, Tumbling):
            self._add_tumbling(port, batch, stamps, self._frontier)
        else:
            self._add_sliding(port, batch, stamps, self._frontier)
        self._flush()

    # -- tumbling and sliding ------------------------------------------------------

    # `frontier`: events of windows that end at or before it are late.
    def _add_tumbling(self, port, batch, stamps, frontier):
        aligned = self._aligned
        size = aligned.size
        opened, numbers = self._open, self._numbers
        new, grow = self._new, self._grow
        adds = self._adds  # "sum" / "count": inlined below (no call per record)
        count_one = adds == "count"  # decided once, not per record
        floor = math.floor
        late = self._late_out
        record = None
        last_j = keyed = None  # consecutive events mostly share a window
        try:
            for record, stamp in zip(batch, stamps):
                j = floor(stamp / size)
                if j * size > stamp:  # the float quotient rounded across a boundary
                    j -= 1
                elif (j + 1) * size <= stamp:
                    j += 1
                if j != last_j:
                    if (j + 1) * size <= frontier:
                        late.append(record)
                        continue
                    keyed = opened.get(j)
                    if keyed is None:
                        keyed = opened[j] = {}
                        heapq.heappush(numbers, j)
                    last_j = j
                key = record[0]
                if adds is not None:
                    acc = keyed.get(key, _MISSING)
                    value = 1 if count_one else record[1]
                    keyed[key] = value if acc is _MISSING else acc + value
                    continue
                acc = keyed.get(key, _MISSING)
                if acc is _MISSING:
                    keyed[key] = new(record[1], stamp, port)
                else:
                    keyed[key] = grow(acc, record[1], stamp, port)
        except KernelError:
            raise
        except Exception as exc:
            raise self._user_error(exc, record) from exc

    def _add_sliding(self, port, batch, stamps, frontier):
        aligned = self._aligned
        end = aligned.end
        opened, numbers = self._open, self._numbers
        new, grow = self._new, self._grow
        late = self._late_out
        record = None
        try:
            for record, stamp in zip(batch, stamps):
                j = aligned.last(stamp)
                in_any = placed = False
                key = record[0]
                # every window j with start(j) <= stamp < end(j), newest first
                while (window_end := end(j)) > stamp:
                    in_any = True
                    if window_end > frontier:
                        keyed = opened.get(j)
                        if keyed is None:
                            keyed = opened[j] = {}
                            heapq.heappush(numbers, j)
                        acc = keyed.get(key, _MISSING)
                        if acc is _MISSING:
                            keyed[key] = new(record[1], stamp, port)
                        else:
                            keyed[key] = grow(acc, record[1], stamp, port)
                        placed = True
                    j -= 1
                if in_any and not placed:  # in no window at all (step > size): not late
                    late.append(record)
        except KernelError:
            raise
        except Exception as exc:
            raise self._user_error(exc, record) from exc

    def _fire_aligned(self, frontier):
        aligned = self._aligned
        opened, numbers = self._open, self._numbers
        while numbers and aligned.end(numbers[0]) <= frontier:
            j = heapq.heappop(numbers)
            self._emit_window(j, opened.pop(j))

    # -- sessions --------------------------------------------------------------------

    def _add_to_sessions(self, port, batch, stamps):
        gap = self.window.gap
        frontier = self._frontier
        sessions, ends, seq = self._sessions, self._ends, self._seq
        late = self._late_out
        record = None
        try:
            for record, stamp in zip(batch, stamps):
                key = record[0]
                start, end = stamp, stamp + gap
                mine = sessions.get(key)
                if mine is None:
                    mine = sessions[key] = []
                # the open sessions this event touches: [s, e) overlapping [stamp, stamp + gap)
                touching = [s for s in mine if s[0] < end and stamp < s[1]]
                if not touching and end <= frontier:
                    late.append(record)
                    continue
                # merge what it bridges, oldest session first, then the event
                acc = _MISSING
                for s in touching:  # `mine` is sorted by start
                    start = min(start, s[0])
                    end = max(end, s[1])
                    acc = s[2] if acc is _MISSING else self._merge_accs(acc, s[2])
                    mine.remove(s)
                new = self._new_session_acc(record[1], stamp, port, next(seq))
                acc = new if acc is _MISSING else self._merge_accs(acc, new)
                merged = [start, end, acc]
                mine.append(merged)
                mine.sort(key=_first)
                heapq.heappush(ends, (end, start, next(seq), key))
        except KernelError:
            raise
        except Exception as exc:
            raise self._user_error(exc, record) from exc

    def _new_session_acc(self, value, stamp, port, sequence):
        if self._merge is None:
            return _Values([(sequence, value, port)])
        return self._new(value, stamp, port)

    def _merge_accs(self, older, newer):
        if self._merge is None:
            older.values.extend(newer.values)
            return older
        return self._merge(older, newer)

    def _fire_sessions(self, frontier):
        sessions, ends = self._sessions, self._ends
        out = self._out
        while ends and ends[0][0] <= frontier:
            end, start, _, key = heapq.heappop(ends)
            mine = sessions.get(key)
            if not mine:
                continue
            for s in mine:
                if s[0] == start and s[1] == end:
                    break
            else:
                continue  # stale: that session grew or merged since
            mine.remove(s)
            if not mine:
                del sessions[key]
            acc = s[2]
            if acc.__class__ is _Values:
                acc = self._from_values(acc.values)
            out.extend(self._results(key, Window(start, end), acc))

    def _from_values(self, values):
        values.sort(key=_first)  # arrival order, across merged sessions
        (_, value, port), *rest = values
        acc = self._new(value, math.nan, port)
        for _, value, port in rest:
            acc = self._grow(acc, value, math.nan, port)
        return acc

    # -- progress ------------------------------------------------------------------

    def on_watermark(self, watermark):
        self._frontier = watermark
        try:
            if isinstance(self.window, Session):
                self._fire_sessions(watermark)
            else:
                self._fire_aligned(watermark)
        except KernelError:
            raise
        except Exception as exc:
            raise OperatorError.wrap(self.name, self._function(), exc, has_record=False) from exc
        self._flush()

    def on_end(self):
        if self.late and not self.route_late:
            self.context.logger.warning(
                "%s: dropped %d late events (behind the watermark for windows already emitted); "
                "window(..., late=True) passes them on instead",
                self.name,
                self.late,
            )

    def _flush(self):
        if self._out:
            emit_in_batches(self.emit, self._out)
            self._out.clear()
        late = self._late_out
        if late:
            self.late += len(late)
            if self.route_late:
                self.emit(LateBatch(late))
            self._late_out = []

    def result(self):
        return {"late": self.late} if self.late else None

    def _user_error(self, exc, record):
        return keyed_error(self.name, self._function(), exc, record)  # an unhashable key named as such

    def _function(self):
        return "window"


_MISSING = object()


class WindowAggregate(_Windowing):
    """`(key, window, result)` per key and window of a keyed stream.

    With `flat=True` it is the partial half of a combiner (`window_combiner`):
    it emits `(key, j, acc)` for window number `j` when its own watermark
    passes the window's end, or, while its partials hardly shrink what it is
    given, passes batches on unaggregated (see `_pass_on`)."""

    def __init__(self, window, aggregation: Aggregation, late: bool = False, flat: bool = False) -> None:
        super().__init__(window, late)
        self.aggregation = aggregation
        self.flat = flat
        self._new = aggregation.create
        self._grow = aggregation.add
        self._merge = aggregation.merge
        kind = type(aggregation)
        self._adds = {SumAggregation: "sum", CountAggregation: "count"}.get(kind)

    def open(self, context):
        super().open(context)
        if self.flat:
            self._passing = _START_PASSING  # passing batches on instead of aggregating them
            self._passed = 0  # batches passed on since the last measurement
            self._measured = [0, 0, 0]  # accumulators created, records added, windows fired
            # a measurement spans this many emitted windows: a whole window's
            # lifetime, so keys that repeat across batches count as repeats
            self._windows_to_measure = math.ceil(self.window.size / self._aligned.step) + 1

    # -- the partial half: pre-aggregate, or pass on when it does not pay ----------
    # A partial costs its sender an aggregation and its owner a merge; it pays
    # where it stands for several records. With 1,000 keys, ~1.6 events per
    # key and window and 2 kernels, each kernel's partials were 79% of its
    # records, and pre-aggregating made both kernels slower than one
    # (benches/pipelines.py windowed sum, measured per kernel: ~260 ms of
    # kernel time with partials, ~150 ms passing records on). So the partial
    # half measures, over a window's lifetime, how many accumulators its
    # records create, and above _PASS_ON_ABOVE per record passes batches on
    # to the owner (`WindowMerge` aggregates them), going back to
    # aggregating every _PASSED_BEFORE_PROBE batches to measure again.

    def on_batch(self, port, batch):
        if not self.flat:
            super().on_batch(port, batch)
            return
        if self._passing and self._pass_on(batch):
            return
        opened = self._open
        before = sum(map(len, opened.values()))
        super().on_batch(port, batch)
        measured = self._measured
        measured[0] += sum(map(len, opened.values())) - before
        measured[1] += len(batch)

    def _pass_on(self, batch) -> bool:
        """Emit `batch` as it is, if none of its events is (even in part) late
        here: the owner then decides nothing about lateness, and the results
        and late counts are those of pre-aggregating. An event at `t` is only
        in windows that end after `t`, so `t >= frontier` keeps them all open."""
        stamps = self._stamps(batch)
        if not stamps or min(stamps) < self._frontier:
            return False  # aggregated here, where lateness is decided
        self.emit(batch)
        self._passed += 1
        if self._passed >= _PASSED_BEFORE_PROBE:
            self._passing = False  # measure again
            self._measured = [0, 0, 0]
        return True

    def on_watermark(self, watermark):
        if not self.flat:
            super().on_watermark(watermark)
            return
        open_windows = len(self._numbers)
        super().on_watermark(watermark)
        measured = self._measured
        measured[2] += open_windows - len(self._numbers)
        if self._passing or measured[2] < self._windows_to_measure or measured[1] < _MEASURE_AT_LEAST:
            return
        created, added = measured[0], measured[1]
        self._passing = created > _PASS_ON_ABOVE * added
        self._passed = 0
        self._measured = [0, 0, 0]

    def on_idle(self):
        # The partial half's inputs all went idle: the owner stops waiting
        # for this kernel and may emit windows that a partial held here
        # belongs to, events that came in time. Send every partial now: the
        # owner merges several partials of a window as well as one.
        if not self.flat:
            return
        opened, numbers = self._open, self._numbers
        while numbers:
            j = heapq.heappop(numbers)
            self._emit_window(j, opened.pop(j))
        self._flush()

    def _results(self, key, window, acc):
        return ((key, window, self.aggregation.result(acc)),)

    def _emit_window(self, j, accs: dict) -> None:
        if self.flat:  # a partial for WindowMerge: flat scalars cross the exchange by msgpack
            self._out.extend([(key, j, acc) for key, acc in accs.items()])
            return
        window = self._aligned.window(j)
        if self._adds is not None:  # the accumulator is the result
            self._out.extend([(key, window, acc) for key, acc in accs.items()])
        else:
            result = self.aggregation.result
            self._out.extend([(key, window, result(acc)) for key, acc in accs.items()])

    def _function(self):
        return self.aggregation.function or f"window {self.aggregation.name}"


# The partial half passes batches on while its records create more than this
# many accumulators each (over a window's lifetime). Both sides of the
# exchange pay about as much per partial as per record, so a partial that
# stands for fewer than two records costs more than it saves.
_PASS_ON_ABOVE = 0.5
_PASSED_BEFORE_PROBE = 64  # batches passed on before measuring again
_MEASURE_AT_LEAST = 2048  # records a measurement needs
_START_PASSING = False  # pre-aggregate until measured (tests start passing on)


class WindowJoin(_Windowing):
    """Inner join of two keyed streams (ports 0 and 1) per key and window:
    `(key, window, (left, right))` for every pair, in arrival order."""

    def __init__(self, window, late: bool = False) -> None:
        super().__init__(window, late)

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
        window = self._aligned.window(j)
        for key, acc in accs.items():
            self._out.extend(self._results(key, window, acc))

    def _function(self):
        return "join"


class WindowMerge(WindowAggregate):
    """The owner's half of a windowed aggregate split around an exchange.
    Each kernel's partial half (`WindowAggregate(flat=True)`) sends either
    `(key, j, partial)` for window number `j` (plain lists), merged here with
    `combine`, or its records unaggregated (`TimedBatch`es), aggregated here.
    Results go out once this kernel's watermark, the minimum over every
    kernel, passes a window's end.
    A kernel decides which of its events are late by its own watermark, sends
    a window's partial before the watermark that closes it, and passes on only
    records that no window has closed on yet there; so in order, nothing that
    comes here is late. But a kernel whose inputs were all idle lags behind:
    the frontier here moved on without it, and what it sends when it wakes
    may be for windows already emitted here. Those are late here, as they
    would be on one kernel, and are dropped and counted (a partial as one
    event: it does not say how many it stands for), never emitted twice."""

    def __init__(self, window, aggregation: Aggregation, combine) -> None:
        super().__init__(window, aggregation)
        self.combine = combine

    def on_batch(self, port, batch):
        frontier = self._frontier
        if batch.__class__ is TimedBatch:  # records a partial half passed on
            if isinstance(self.window, Tumbling):
                self._add_tumbling(port, batch, batch.timestamps, frontier)
            else:
                self._add_sliding(port, batch, batch.timestamps, frontier)
            self._flush()  # count the late ones now: a snapshot may come before the next watermark
            return
        combine = self.combine
        opened, numbers, end = self._open, self._numbers, self._aligned.end
        record = None
        last_j = keyed = None  # a window's partials come together
        dropped = 0
        try:
            for record in batch:
                key, j, partial = record
                if j != last_j:
                    last_j = j
                    if end(j) <= frontier:  # emitted here already (see the class)
                        keyed = None
                    else:
                        keyed = opened.get(j)
                        if keyed is None:
                            keyed = opened[j] = {}
                            heapq.heappush(numbers, j)
                if keyed is None:
                    dropped += 1
                    continue
                acc = keyed.get(key, _MISSING)
                keyed[key] = partial if acc is _MISSING else combine(acc, partial)
        except KernelError:
            raise
        except Exception as exc:
            raise OperatorError.wrap(self.name, self.aggregation.function or "merge", exc,
                                     record=record) from exc
        self.late += dropped


def window_combiner(window, aggregation: Aggregation, late: bool):
    """(partial, merge) factories when the aggregate can pre-aggregate per
    kernel before the exchange: tumbling or sliding windows, an aggregation
    whose accumulators merge and are their own result (count, sum, reduce),
    late events not routed (a late side stream must stay on its kernel).
    Otherwise None."""
    mergeable = isinstance(aggregation, (CountAggregation, SumAggregation, ReduceAggregation))
    if late or isinstance(window, Session) or not mergeable:
        return None
    if isinstance(aggregation, ReduceAggregation):
        combine = aggregation.function  # associative, as reduce after key_by
    else:
        combine = _add  # partial counts and sums add up
    return (
        lambda: WindowAggregate(window, aggregation, late=False, flat=True),
        lambda: WindowMerge(window, aggregation, combine),
    )


def _add(a, b):
    return a + b


class SelectBatches(Operator):
    """Passes on a window's result batches (`late=False`) or its late
    records (`late=True`): the two outputs of a window with `late=True`."""

    def __init__(self, late: bool) -> None:
        self.late = late

    def on_batch(self, port, batch):
        if (batch.__class__ is LateBatch) is self.late:
            self.emit(list(batch) if self.late else batch)
