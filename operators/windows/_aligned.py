"""Tumbling and sliding windows, kept by window number.

Window `j` is `[j * step, end(j))`, where `end(j)` is `(j + m) * step` when
the size is `m` steps (tumbling: m = 1), so consecutive windows tile exactly
in floats (`5 * 0.1 + 0.1` is not `6 * 0.1`), else `j * step + size`.
Membership is decided by these same numbers, so every event lands in the
windows that hold it by the predicate `start <= t < end`.

Every kernel numbers windows alike, so a window's accumulators from several
kernels meet at its owner by number: these strategies also serve the two
halves of a combiner (`count_created`, `open_windows`, `merge_partials`).
"""

from __future__ import annotations

import heapq
import math
from operator import itemgetter

from kernel.state import map_state

from kernel.dataflow._errors import PASSES_THROUGH

from .._windows import Window
from ._strategy import TimeTooLarge, WindowStrategy, too_coarse

_MISSING = object()
_first, _second = itemgetter(0), itemgetter(1)


def _all_pairs(batch: list) -> bool:
    """Whether every record is a plain 2-tuple (what key_by makes), so that
    its key and value may go as two columns and come back, if late, as an
    equal tuple."""
    n = len(batch)
    return list(map(type, batch)).count(tuple) == n and list(map(len, batch)).count(2) == n


def whole_steps(size: float, step: float) -> int | None:
    """`m` where the size is exactly `m` steps (`m * step == size` in
    floats), else None."""
    span = round(size / step)
    return span if span >= 1 and span * step == size else None


class AlignedWindows(WindowStrategy):
    """Windows by number: `opened` (keyed state, window number -> {key:
    acc}) and a heap of the open numbers, rebuilt from it on restore."""

    __slots__ = ("_adds", "_emit_window", "_grow", "_new", "_user_error", "numbers", "opened", "size",
                 "span", "step", "touched")

    def __init__(self, operator, size: float, step: float) -> None:
        self.size, self.step = size, step
        self.span = whole_steps(size, step)
        self.opened = map_state(operator, "windows")  # window number -> {key: acc}
        self.numbers: list = []  # heap of the window numbers in `opened`
        self._new, self._grow, self._adds = operator._new, operator._grow, operator._adds
        self._emit_window, self._user_error = operator._emit_window, operator._user_error
        self.touched: dict | None = None  # while counting: window number -> its accumulators before

    def start(self, j: int) -> float:
        return j * self.step

    def end(self, j: int) -> float:
        return (j + self.span) * self.step if self.span is not None else j * self.step + self.size

    def last(self, t: float) -> int:
        """The largest j with start(j) <= t."""
        try:
            j = math.floor(t / self.step)
        except OverflowError:  # (a step so small that t / step is infinite: Tumbling(5e-324))
            raise TimeTooLarge(t, self._kind()) from None
        if j * self.step > t:
            j -= 1
        elif (j + 1) * self.step <= t:
            j += 1
        return j

    def window(self, j: int) -> Window:
        return Window(self.start(j), self.end(j))

    def fire(self, frontier: float, limit: int | None = None) -> bool:
        # (every window at once: their results are made as they go on)
        end, opened, numbers = self.end, self.opened, self.numbers
        emit_window = self._emit_window
        while numbers and end(numbers[0]) <= frontier:
            j = heapq.heappop(numbers)
            emit_window(j, opened.pop(j))
        return False

    def sequence(self) -> int:
        return 0  # windows are ordered by number, not by arrival

    def restored(self, sequence: int) -> None:
        self.numbers = list(self.opened)
        heapq.heapify(self.numbers)

    # -- for the combiner's halves ----------------------------------------------------

    # A partial half counts the accumulators each batch creates (`_pass_on`).
    # Counting every open window's before and after the batch cost a pass
    # over all of them a batch: with 30,000 windows open (max_delay far past
    # the size) a run of two kernels spent ~20 s in it, and its batches shrank
    # as the kernel slowed. So the windows the batch goes into (`_open`, once
    # per change of window) note their size the first time, and only they
    # are counted.

    def count_created(self) -> None:
        """Start counting the accumulators created, until `created()`."""
        self.touched = {}

    def created(self) -> int:
        """The accumulators created since `count_created()`."""
        touched, self.touched = self.touched, None
        opened = self.opened
        # (a window fired meanwhile is gone: none fires inside a batch today)
        return sum(len(opened[j]) - before for j, before in touched.items() if j in opened)

    def open_windows(self) -> int:
        return len(self.numbers)

    def merge_partials(self, batch: list, frontier: float, combine, error) -> int:
        """Merge partials into the windows' accumulators with `combine`: a
        window's, `(key, j, acc)` for window number `j`, into window `j`; a
        slice's (`_panes.SlidingPanes`: a sliding window's partial half),
        `(key, p + 0.5, acc)` for slice `p`, into each window it is in.
        What would go only into windows that ended at or before `frontier`
        is dropped. Returns how many partials were dropped; `error(exc,
        record)` is the error to raise when `combine` fails, `record`
        naming the window it was merged into."""
        end = self.end
        record = None
        last_j = keyed = None  # a window's (or slice's) partials come together
        slices = ()  # the {key: acc} of the open windows a slice's partials go into
        into = None  # the window number a slice's partial is being merged into
        dropped = 0
        try:
            for record in batch:
                key, j, partial = record
                if j != last_j:  # (a slice's number, a float, equals no window's, an int)
                    last_j = j
                    keyed = None
                    if j.__class__ is float:  # (oldest window first)
                        slices = self._slice_windows(math.floor(j), frontier)[::-1]
                    elif end(j) > frontier:  # else emitted already
                        keyed = self._open(j)
                if keyed is not None:
                    acc = keyed.get(key, _MISSING)
                    keyed[key] = partial if acc is _MISSING else combine(acc, partial)
                elif j.__class__ is float and slices:
                    for into, window in slices:  # noqa: B007 (`into`: named by the error below)
                        acc = window.get(key, _MISSING)
                        window[key] = partial if acc is _MISSING else combine(acc, partial)
                else:
                    dropped += 1
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            if record is not None and record[1].__class__ is float:
                record = (record[0], into, record[2])
            raise error(exc, record) from exc
        return dropped

    def _open(self, j: int) -> dict:
        """Window `j`'s accumulators, `{key: acc}`, opened if new."""
        keyed = self.opened.get(j)
        if keyed is None:
            keyed = self.opened[j] = {}
            heapq.heappush(self.numbers, j)
        touched = self.touched
        if touched is not None and j not in touched:
            touched[j] = len(keyed)
        return keyed

    def _slice_windows(self, p: int, frontier: float) -> list:
        """`(j, {key: acc})`, newest first, of every window slice `p` is in
        (`span` of them, ending with window `p`) that ends after
        `frontier`, opened if new."""
        end = self.end
        windows = []
        for j in range(p, p - self.span, -1):
            if end(j) <= frontier:
                break  # (and every older one)
            windows.append((j, self._open(j)))
        return windows


class TumblingWindows(AlignedWindows):
    """One window per event: `j = floor(t / size)`, corrected where the
    float quotient rounds across a boundary."""

    __slots__ = ()

    def __init__(self, operator, size: float) -> None:
        super().__init__(operator, size, size)

    # The loops below are the windowed sum's hot path (benches/pipelines.py).
    # A record in the same window as the one before it (most are) is placed
    # by two comparisons with that window's bounds, `j * size <= t <
    # (j + 1) * size`, the very products the general computation checks, so
    # the window is the same either way; only a record outside them pays
    # for `floor` and the corrections. A running sum or count is inlined
    # (no call per record); windowed sum on one kernel: ~370 -> ~280 ns a
    # record (cProfile-free CPU time, 200,000 events).
    # The window before the last is kept too: events out of order by less
    # than a window go back and forth between two windows near each
    # boundary (benches/pipelines.py's windowed sum: 17% of its records
    # change window, 99% of those to the one before), and those two
    # comparisons more beat `_enter` (the add alone, 200,000 events:
    # 110-134 -> 72-93 ms). Within a batch the frontier stays as it is, so
    # a window kept open stays open.

    def add(self, port, batch, stamps, frontier, late):
        if self._adds is not None:
            self._add_running(batch, stamps, frontier, late, self._adds == "count")
            return
        size, enter = self.size, self._enter
        new, grow = self._new, self._grow
        record = None
        # the bounds of the last record's window and of the one before it (none yet)
        low = high = low2 = high2 = math.inf
        keyed = keyed2 = None
        try:
            for record, stamp in zip(batch, stamps):
                if not low <= stamp < high:
                    if low2 <= stamp < high2:
                        low, high, low2, high2 = low2, high2, low, high
                        keyed, keyed2 = keyed2, keyed
                    else:
                        j, found = enter(stamp, frontier)
                        if found is None:
                            late.append(record)
                            continue
                        low2, high2, keyed2 = low, high, keyed
                        low, high, keyed = j * size, (j + 1) * size, found
                key = record[0]
                acc = keyed.get(key, _MISSING)
                if acc is _MISSING:
                    keyed[key] = new(record[1], stamp, port)
                else:
                    keyed[key] = grow(acc, record[1], stamp, port)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._user_error(exc, record) from exc

    def _kind(self) -> str:
        """The window spec, as a TimeTooLarge error names it."""
        return f"Tumbling({self.size!r})"

    def _enter(self, stamp: float, frontier: float) -> tuple[int, dict | None]:
        """A record leaves the last record's window: the number of its window
        and that window's accumulators (opened now if new), or None when the
        window has closed (the record is late). Once per change of window,
        not per record."""
        j = self.last(stamp)
        if not stamp < (j + 1) * self.size or too_coarse(stamp, self.size):
            # so large a time that floats put it in no window (its window's
            # end rounds to its start), or in one of another size: said, not
            # dropped nor put in [t, t)
            raise TimeTooLarge(stamp, self._kind())
        if (j + 1) * self.size <= frontier:
            return j, None
        return j, self._open(j)

    def _add_running(self, batch, stamps, frontier, late, count_one: bool) -> None:
        """`add` for a running sum (`count_one`: a count), the `+` inlined."""
        size, enter = self.size, self._enter
        record = None
        low = high = low2 = high2 = math.inf
        get = keyed = keyed2 = None
        try:
            for record, stamp in zip(batch, stamps):
                if not low <= stamp < high:
                    if low2 <= stamp < high2:
                        low, high, low2, high2 = low2, high2, low, high
                        keyed, keyed2 = keyed2, keyed
                    else:
                        j, found = enter(stamp, frontier)
                        if found is None:
                            late.append(record)
                            continue
                        low2, high2, keyed2 = low, high, keyed
                        low, high, keyed = j * size, (j + 1) * size, found
                    get = keyed.get
                key = record[0]
                acc = get(key, _MISSING)
                value = 1 if count_one else record[1]
                keyed[key] = value if acc is _MISSING else acc + value
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._user_error(exc, record) from exc

    def add_columns(self, port, keys: list, values: list, stamps, frontier, late) -> None:
        """`add` for a batch given as columns, record i being `(keys[i],
        values[i])` at `stamps[i]` (a window fused with the key_by and
        map_values before it: `WindowAggregate.fuse_upstream`). A running
        sum or count takes them as they are; other aggregations get the
        pairs. The loop is `_add_running`'s over columns rather than
        records: reading two lists beats building a pair per record and
        indexing it (the windowed sum's hot loop: ~17% less, RESULTS.md)."""
        if self._adds is None:
            self.add(port, list(zip(keys, values)), stamps, frontier, late)
            return
        count_one = self._adds == "count"
        size, enter = self.size, self._enter
        key = value = None
        low = high = low2 = high2 = math.inf
        get = keyed = keyed2 = None
        try:
            for key, value, stamp in zip(keys, values, stamps):
                if not low <= stamp < high:
                    if low2 <= stamp < high2:
                        low, high, low2, high2 = low2, high2, low, high
                        keyed, keyed2 = keyed2, keyed
                    else:
                        j, found = enter(stamp, frontier)
                        if found is None:
                            late.append((key, value))
                            continue
                        low2, high2, keyed2 = low, high, keyed
                        low, high, keyed = j * size, (j + 1) * size, found
                    get = keyed.get
                acc = get(key, _MISSING)
                if count_one:
                    keyed[key] = 1 if acc is _MISSING else acc + 1
                else:
                    keyed[key] = value if acc is _MISSING else acc + value
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._user_error(exc, (key, value)) from exc


class SlidingWindows(AlignedWindows):
    """About `size / step` windows per event, newest first; an event between
    windows (step > size) is in none, and not late.

    Where the size is a whole number `m` of steps, every event of the slice
    `[p * step, (p + 1) * step)` is in the same windows, `p - m + 1 .. p`:
    the loops keep the accumulators of those still open for the last
    record's slice, and a record in the same slice (most are) goes into
    them without working out its windows again (NEXMark q5's count over 10
    s windows sliding by 2 s, 230,000 events in batches of 1,024: ~1.4 us
    an event window by window, ~0.5 by slice)."""

    __slots__ = ()

    def _kind(self) -> str:
        """The window spec, as a TimeTooLarge error names it."""
        return f"Sliding({self.size!r}, {self.step!r})"

    def add(self, port, batch, stamps, frontier, late):
        if self._adds is not None and _all_pairs(batch):
            # a running sum or count (a key_by right before, no map_values
            # fused in): the loop over columns, `+` inlined (a count over
            # Sliding(10.0, 2.0), 230,000 pairs: ~166 -> ~140 ms)
            # (this class's: a partial half's `add` calls it for events behind their slice)
            keys, values = list(map(_first, batch)), list(map(_second, batch))
            SlidingWindows.add_columns(self, port, keys, values, stamps, frontier, late)
            return
        new, grow = self._new, self._grow
        low = high = math.inf  # the last record's slice, and its windows still open
        targets: list = []
        record = None
        try:
            for record, stamp in zip(batch, stamps):
                if not low <= stamp < high:
                    low, high, targets = self._slice_of(stamp, frontier)
                    if targets is None:  # not a whole number of steps, or too large a time
                        self._add_one(port, record, stamp, frontier, late)
                        continue
                if not targets:
                    late.append(record)  # every window of it was emitted
                    continue
                key, value = record[0], record[1]
                for keyed in targets:
                    acc = keyed.get(key, _MISSING)
                    keyed[key] = new(value, stamp, port) if acc is _MISSING else grow(acc, value, stamp, port)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._user_error(exc, record) from exc

    def _slice_of(self, stamp: float, frontier: float) -> tuple[float, float, list | None]:
        """`(low, high, targets)`: the slice holding `stamp` and the
        accumulators (`{key: acc}`, newest window first, opened if new) of
        its windows that end after `frontier`; `targets` None (and an empty
        slice) where the size is no whole number of steps or floats put
        `stamp` at the end of its slice (a time too large: `_add_one` says so)."""
        if self.span is None:
            return math.inf, math.inf, None
        p = self.last(stamp)
        high = (p + 1) * self.step
        if not stamp < high or too_coarse(stamp, self.step):
            return math.inf, math.inf, None
        return p * self.step, high, [keyed for _, keyed in self._slice_windows(p, frontier)]

    def _add_one(self, port, record, stamp, frontier, late) -> None:
        """One record into each of its windows, worked out one by one."""
        if too_coarse(stamp, min(self.step, self.size)):  # windows a step apart, or their bounds,
            # would round together
            raise TimeTooLarge(stamp, self._kind())
        end = self.end
        j = self.last(stamp)
        in_any = placed = False
        key = record[0]
        # every window j with start(j) <= stamp < end(j), newest first
        while (window_end := end(j)) > stamp:
            in_any = True
            if window_end > frontier:
                keyed = self._open(j)
                acc = keyed.get(key, _MISSING)
                if acc is _MISSING:
                    keyed[key] = self._new(record[1], stamp, port)
                else:
                    keyed[key] = self._grow(acc, record[1], stamp, port)
                placed = True
            j -= 1
        # late: its windows were all emitted (one in no window at all,
        # between windows when step > size, is not late: it is in none)
        if not placed:
            if in_any:
                late.append(record)
            elif self.step <= self.size or end(j) <= j * self.step:  # in no window, and not
                # in a gap between windows: see TimeTooLarge
                raise TimeTooLarge(stamp, self._kind())

    def add_columns(self, port, keys: list, values: list, stamps, frontier, late) -> None:
        """`add` for columns (see `TumblingWindows.add_columns`): a running
        sum or count is added in place in each of the event's windows, no
        call per window (NEXMark q5's count over 10 s windows sliding by
        2 s: five windows a bid)."""
        if self._adds is None:
            # (this class's: a partial half's `add_columns` calls it for events behind their slice)
            SlidingWindows.add(self, port, list(zip(keys, values)), stamps, frontier, late)
            return
        count_one = self._adds == "count"
        low = high = math.inf
        targets: list = []
        key = value = None
        try:
            for key, value, stamp in zip(keys, values, stamps):
                if not low <= stamp < high:
                    low, high, targets = self._slice_of(stamp, frontier)
                    if targets is None:
                        self._add_one(port, (key, value), stamp, frontier, late)
                        continue
                if not targets:
                    late.append((key, value))
                    continue
                amount = 1 if count_one else value
                for keyed in targets:
                    acc = keyed.get(key, _MISSING)
                    keyed[key] = amount if acc is _MISSING else acc + amount
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._user_error(exc, (key, value)) from exc
