"""Event-time windows (Tumbling, Sliding, Session) and windowed joins.

* Aggregates on streams where no event is late equal brute-force references
  computed over the whole input, on one kernel and on two.
* Late events on one kernel match a replay of the source batches and their
  watermarks; on two kernels, every event is either counted or late.
* Joins equal a nested loop over both inputs.
* fold and reduce see arrival order on one kernel (a non-commutative fn).
* Edges: datetimes, boundaries, JSON, missing timestamps, bad arguments.

Timestamps are multiples of 1/8 and window sizes multiples of 1/8 too, so
every window bound and comparison is exact in floats; only the tests of
sizes such as 0.1 use inexact floats, and they check no more than that each
event lands in a window that holds it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import operator
import os
import re
import time
from collections import Counter, defaultdict

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelError, Operator, Source, VirtualClock, run
from operators import EventTimeSource, Session, Sliding, Tumbling, Window

ONE = settings(max_examples=60, deadline=None)
TWO = settings(max_examples=20, deadline=None)

KEYS = ("x", "y", "z", 3)
MAX_DELAY = 0.5

TUMBLINGS = [Tumbling(1.0), Tumbling(0.25), Tumbling(3.0)]
# step dividing size, not dividing it, equal to it, and larger (gaps between windows)
SLIDINGS = [
    Sliding(2.0, 0.5),
    Sliding(1.0, 0.25),
    Sliding(0.75, 0.5),
    Sliding(1.0, 0.375),
    Sliding(0.75, 0.75),
    Sliding(0.5, 1.25),
]
SESSIONS = [Session(0.5), Session(1.0), Session(2.0)]
batch_sizes = st.sampled_from([1, 2, 3, 7, 64])


@st.composite
def streams(draw, disorder: float = MAX_DELAY, max_size: int = 40):
    """(key, t, value) events in arrival order: a non-decreasing clock plus a
    random lag of at most `disorder` seconds, in steps of 1/8."""
    clock = draw(st.integers(-16, 16)) / 8
    events = []
    for _ in range(draw(st.integers(0, max_size))):
        clock += draw(st.sampled_from([0, 1, 2, 4, 8, 20])) / 8
        lag = draw(st.integers(0, int(disorder * 8))) / 8
        events.append((draw(st.sampled_from(KEYS)), clock - lag, draw(st.integers(-9, 30))))
    return events


# -- references ---------------------------------------------------------------------------


def aligned_windows(window, t: float) -> list[Window]:
    """Every tumbling or sliding window holding t: start <= t < start + size."""
    step = window.size if isinstance(window, Tumbling) else window.step
    size = window.size
    found = []
    k = math.floor(t / step) + 1
    while k * step + size > t:
        if k * step <= t:
            found.append(Window(k * step, k * step + size))
        k -= 1
    return found


def sessions(gap: float, stamped: list[tuple[float, int]]) -> list[tuple[Window, list[int]]]:
    """(t, index) pairs cut into sessions: sorted by time, split where two
    consecutive timestamps are gap or more apart. Indices in input order."""
    runs: list[list[tuple[float, int]]] = []
    for t, i in sorted(stamped):
        if runs and t - runs[-1][-1][0] < gap:
            runs[-1].append((t, i))
        else:
            runs.append([(t, i)])
    return [(Window(r[0][0], r[-1][0] + gap), sorted(i for _, i in r)) for r in runs]


def members(window, events) -> dict[tuple, list[int]]:
    """(key, window) -> the indices of its events, in input order."""
    out: dict[tuple, list[int]] = defaultdict(list)
    if isinstance(window, Session):
        by_key = defaultdict(list)
        for i, (key, t, _) in enumerate(events):
            by_key[key].append((t, i))
        for key, stamped in by_key.items():
            for w, indices in sessions(window.gap, stamped):
                out[(key, w)] = indices
    else:
        for i, (key, t, _) in enumerate(events):
            for w in aligned_windows(window, t):
                out[(key, w)].append(i)
    return dict(out)


def by_window(items) -> dict:
    """(key, window, result) records as {(key, window): result}, checking
    that each (key, window) comes out once and windows are `Window`s."""
    out = {}
    for key, w, result in items:
        assert type(w) is Window
        assert w.start < w.end
        assert (key, w) not in out, f"{(key, w)} emitted twice"
        out[(key, w)] = result
    return out


def source(flow, events, max_delay=MAX_DELAY, batch_size=7):
    return flow.from_iterable(events, timestamp=lambda e: e[1], max_delay=max_delay, batch_size=batch_size)


def keyed_values(stream):
    return stream.key_by(lambda e: e[0]).map_values(lambda e: e[2])


def keyed_stamped(stream):
    """(key, (t, value)): lets a collect show that it is in timestamp order."""
    return stream.key_by(lambda e: e[0]).map_values(lambda e: (e[1], e[2]))


# -- 1. aggregates against brute force ------------------------------------------------------


def check_aggregates(window, events, batch_size, cores):
    flow = Dataflow()
    ev = source(flow, events, batch_size=batch_size)
    w = keyed_values(ev).window(window)
    aggregates = {
        "count": w.count(),
        "sum": w.sum(),
        "max": w.reduce(max),
        "fold": w.fold(list, lambda acc, v: sorted([*acc, v])),
        "fold_init": w.fold((), lambda acc, v: (*acc, v)),
        "collect": w.collect(),
        "stamped": keyed_stamped(ev).window(window).collect(),
    }
    handles = {name: agg.collect() for name, agg in aggregates.items()}
    run(flow, cores=cores)

    groups = members(window, events)
    values = {kw: [events[i][2] for i in idx] for kw, idx in groups.items()}
    got = {name: by_window(h.items) for name, h in handles.items()}
    assert got["count"] == {kw: len(v) for kw, v in values.items()}
    assert got["sum"] == {kw: sum(v) for kw, v in values.items()}
    assert got["max"] == {kw: max(v) for kw, v in values.items()}
    assert got["fold"] == {kw: sorted(v) for kw, v in values.items()}
    assert {kw: sorted(v) for kw, v in got["fold_init"].items()} == {
        kw: sorted(v) for kw, v in values.items()
    }
    assert {kw: sorted(v) for kw, v in got["collect"].items()} == {kw: sorted(v) for kw, v in values.items()}
    assert got["stamped"].keys() == groups.keys()
    for kw, idx in groups.items():
        stamped = got["stamped"][kw]
        assert [t for t, _ in stamped] == sorted(t for t, _ in stamped), "collect is in timestamp order"
        assert Counter(stamped) == Counter((events[i][1], events[i][2]) for i in idx)
        if cores == 1:  # one kernel: arrival order is input order (ties stay in it)
            in_time_order = sorted(idx, key=lambda i: events[i][1])
            assert got["collect"][kw] == [events[i][2] for i in in_time_order]
            assert list(got["fold_init"][kw]) == values[kw]
    for agg in aggregates.values():
        assert agg.late_count.value == 0


@ONE
@given(st.sampled_from(TUMBLINGS), streams(), batch_sizes)
def test_tumbling_one_kernel(window, events, batch_size):
    check_aggregates(window, events, batch_size, cores=1)


@ONE
@given(st.sampled_from(SLIDINGS), streams(), batch_sizes)
def test_sliding_one_kernel(window, events, batch_size):
    check_aggregates(window, events, batch_size, cores=1)


@ONE
@given(st.sampled_from(SESSIONS), streams(), batch_sizes)
def test_session_one_kernel(window, events, batch_size):
    check_aggregates(window, events, batch_size, cores=1)


@TWO
@given(st.sampled_from(TUMBLINGS + SLIDINGS + SESSIONS), streams(), batch_sizes)
def test_every_kind_two_kernels(window, events, batch_size):
    check_aggregates(window, events, batch_size, cores=2)


def arrival_order(window, events, batch_size):
    flow = Dataflow()
    w = source(flow, events, max_delay=5.0, batch_size=batch_size).key_by(lambda e: e[0])
    w = w.map_values(lambda e: (e[2],))
    w = w.window(window)
    reduced, folded = w.reduce(operator.add).collect(), w.fold((), operator.add).collect()
    run(flow)
    expected = {kw: tuple(events[i][2] for i in idx) for kw, idx in members(window, events).items()}
    return by_window(reduced.items), by_window(folded.items), expected


@ONE
@given(st.sampled_from(TUMBLINGS + SLIDINGS), streams(), batch_sizes)
def test_reduce_and_fold_see_arrival_order_on_one_kernel(window, events, batch_size):
    # tuple concatenation is associative but not commutative
    reduced, folded, expected = arrival_order(window, events, batch_size)
    assert reduced == expected
    assert folded == expected


def appended(acc: list, value) -> list:
    acc.append(value)  # changes its accumulator: a shared start list mixes keys and windows
    return acc


@ONE
@given(st.sampled_from(TUMBLINGS + SLIDINGS + SESSIONS), streams(), batch_sizes, st.sampled_from([1, 2]))
def test_fold_from_a_list_value_gives_every_key_and_window_its_own(window, events, batch_size, cores):
    # `fold([], fn)` with an fn that appends: the start value is copied for
    # each key and window, as a factory's would be made afresh
    flow = Dataflow()
    w = source(flow, events, max_delay=5.0, batch_size=batch_size).key_by(lambda e: e[0])
    folded = w.map_values(lambda e: e[2]).window(window).fold([], appended).collect()
    run(flow, cores=cores)
    expected = {kw: sorted(events[i][2] for i in idx) for kw, idx in members(window, events).items()}
    assert {kw: sorted(acc) for kw, acc in by_window(folded.items).items()} == expected


def test_session_fold_sees_arrival_order_across_merges():
    # "c" bridges the sessions of "a" (t=3) and "b" (t=0); arrival order is a, b, c
    events = [("k", 3.0, "a"), ("k", 0.0, "b"), ("k", 1.5, "c")]
    _, folded, expected = arrival_order(Session(2.0), events, 1)
    assert folded == expected == {("k", Window(0.0, 5.0)): ("a", "b", "c")}


def test_session_reduce_sees_arrival_order_across_merges():
    # _windows.py: "`fold` and `reduce` see a window's values in arrival order";
    # reduce needs only associativity, so a merge must keep the values' order
    events = [("k", 3.0, "a"), ("k", 0.0, "b"), ("k", 1.5, "c")]
    reduced, _, expected = arrival_order(Session(2.0), events, 1)
    assert reduced == expected == {("k", Window(0.0, 5.0)): ("a", "b", "c")}


@pytest.mark.parametrize(
    "window", [Tumbling(0.1), Tumbling(0.3), Sliding(0.1, 0.1), Sliding(0.2, 0.1), Sliding(0.7, 0.3)]
)
@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-300, 300), max_size=30))
def test_inexact_sizes_still_put_events_in_windows_that_hold_them(window, tenths):
    # sizes that are not binary fractions: whatever rounding the windows get,
    # an event must come out in a window [start, end) with start <= t < end,
    # and (step <= size) in at least one: in exactly one for tumbling windows
    events = [("k", n / 10, i) for i, n in enumerate(tenths)]
    flow = Dataflow()
    windowed = keyed_stamped(source(flow, events, max_delay=100.0, batch_size=4)).window(window).collect()
    out = windowed.collect()
    run(flow)
    seen: Counter = Counter()
    for _, w, stamped in out.items:
        for t, i in stamped:
            assert w.start <= t < w.end, f"t={t} reported in {w}"
            seen[i] += 1
    assert windowed.late_count.value == 0
    assert sorted(seen) == list(range(len(events))), "every event is in some window"
    if isinstance(window, Tumbling):
        assert set(seen.values()) <= {1}


def tumbling_number(size: float, t: float) -> int:
    """The j with j * size <= t < (j + 1) * size, by search (not floor and corrections)."""
    j = math.floor(t / size) - 2
    while not t < (j + 1) * size:
        j += 1
    assert j * size <= t
    return j


@pytest.mark.parametrize("size", [0.1, 0.3, 0.7])
@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("ab"), st.integers(-2, 2), st.sampled_from("=<>|")), max_size=60),
       st.sampled_from([1, 3, 64]))
def test_sum_and_count_near_inexact_boundaries_equal_a_search(size, draws, batch_size):
    # Issue 13: a tumbling sum or count places a record that falls inside
    # the previous record's window bounds without recomputing its window.
    # A walk over window bounds k * size (the very products: "="), a float
    # step below or above one ("<", ">") and window middles ("|"), so that
    # consecutive records stay in a window or cross its bounds by the least
    # amount: each must land where a search for j * size <= t < (j + 1) *
    # size puts it.
    events, k = [], 0
    for i, (key, step, where) in enumerate(draws):
        k += step
        bound = k * size
        t = {"=": bound, "<": math.nextafter(bound, -math.inf), ">": math.nextafter(bound, math.inf),
             "|": bound + size / 2}[where]
        events.append((key, t, i))
    expected_sums: Counter = Counter()
    expected_counts: Counter = Counter()
    for key, t, value in events:
        j = tumbling_number(size, t)
        expected_sums[(key, j)] += value
        expected_counts[(key, j)] += 1
    window = Tumbling(size)
    flow = Dataflow()
    keyed = keyed_values(source(flow, events, max_delay=100.0, batch_size=batch_size))
    sums, counts = keyed.window(window).sum(), keyed.window(window).count()
    out_sums, out_counts = sums.collect(), counts.collect()
    run(flow)
    assert sums.late_count.value == counts.late_count.value == 0

    def by_number(items) -> dict:
        out = {}
        for key, w, result in items:
            j = tumbling_number(size, w.start)
            assert w == Window(j * size, (j + 1) * size)
            out[(key, j)] = result
        return out

    assert by_number(out_sums.items) == dict(expected_sums)
    assert by_number(out_counts.items) == dict(expected_counts)


@pytest.mark.parametrize("window", [Tumbling(0.1), Sliding(0.1, 0.1)])
@pytest.mark.parametrize("t", [0.6, 0.3, 11.1])
def test_an_event_near_a_float_boundary_is_in_a_window_that_holds_it(window, t):
    # 6 * 0.1 = 0.6000000000000001 > 0.6 but 5 * 0.1 + 0.1 = 0.6: no [k*0.1, k*0.1 + 0.1) holds 0.6
    flow = Dataflow()
    counts = keyed_values(source(flow, [("k", t, 1)])).window(window).count()
    out = counts.collect()
    run(flow)
    assert counts.late_count.value == 0
    assert len(out.items) == 1, f"t={t}: {out.items}"
    [(_, w, n)] = out.items
    assert n == 1
    assert w.start <= t < w.end, f"t={t} reported in {w}"


# -- 2. late events ---------------------------------------------------------------------------


# Which events are late depends on where the source's batches end (the
# watermark moves after each), and a source sizes its batches from what
# they cost on the kernel's clock: on a virtual clock that never moves
# they cost nothing, so a batch_size up to 16 is every batch's size (the
# first poll reads 16), as `replay` assumes. Runs checked against it pass
# `clock=VirtualClock()`.


def replay(window, events, max_delay, batch_size):
    """What one kernel does: the watermark moves after each source batch to
    the largest timestamp so far minus max_delay; windows whose end <= the
    watermark are emitted. Returns ({(key, window): [indices]}, late flags)."""
    results: dict[tuple, list[int]] = defaultdict(list)
    late = []
    watermark = newest = -math.inf
    open_sessions: dict = defaultdict(list)  # key -> [[start, end, indices]]
    for first in range(0, len(events), batch_size):
        batch = range(first, min(first + batch_size, len(events)))
        for i in batch:
            key, t, _ = events[i]
            if isinstance(window, Session):
                mine = open_sessions[key]
                touching = [s for s in mine if s[0] < t + window.gap and t < s[1]]
                if not touching and t + window.gap <= watermark:
                    late.append(True)
                    continue
                late.append(False)
                merged = [t, t + window.gap, [i]]
                for s in touching:
                    mine.remove(s)
                    merged = [min(merged[0], s[0]), max(merged[1], s[1]), merged[2] + s[2]]
                mine.append(merged)
            else:
                windows = aligned_windows(window, t)
                still_open = [w for w in windows if w.end > watermark]
                late.append(bool(windows) and not still_open)
                for w in still_open:
                    results[(key, w)].append(i)
        newest = max(newest, *(events[i][1] for i in batch))
        watermark = newest - max_delay
        if isinstance(window, Session):  # emit what the watermark closed
            for key, mine in open_sessions.items():
                for s in [s for s in mine if s[1] <= watermark]:
                    mine.remove(s)
                    results[(key, Window(s[0], s[1]))] = sorted(s[2])
    for key, mine in open_sessions.items():  # end of input: everything closes
        for s in mine:
            results[(key, Window(s[0], s[1]))] = sorted(s[2])
    return dict(results), late


def replay_per_kernel(window, events, max_delay, batch_size, kernels):
    """`replay` for each kernel's share on its own (record i is kernel
    i % kernels'), its results merged: what a windowed count, sum or reduce
    with its combiner computes, where each kernel decides which of its
    events are late by its own batches and watermark. Returns
    ({(key, window): [indices]}, late flags), indices into `events`."""
    results: dict[tuple, list[int]] = defaultdict(list)
    late = [False] * len(events)
    for kernel in range(kernels):
        share = list(range(kernel, len(events), kernels))
        got, flags = replay(window, [events[i] for i in share], max_delay, batch_size)
        for kw, indices in got.items():
            results[kw].extend(share[i] for i in indices)
        for i, is_late in zip(share, flags):
            late[i] = is_late
    return dict(results), late


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([*TUMBLINGS, *SLIDINGS, *SESSIONS]),
    streams(disorder=4.0),
    st.sampled_from([1, 2, 3, 5]),
    st.sampled_from([0.0, 0.25, 1.0]),
)
def test_late_events_one_kernel(window, events, batch_size, max_delay):
    expected, late = replay(window, events, max_delay, batch_size)
    flow = Dataflow()
    ev = source(flow, events, max_delay=max_delay, batch_size=batch_size)
    dropped = keyed_values(ev).window(window).count()
    routed = keyed_stamped(ev).window(window, late=True).collect()
    dropped_out, routed_out, late_out = dropped.collect(), routed.collect(), routed.late.collect()
    run(flow, clock=VirtualClock())

    n_late = sum(late)
    assert dropped.late_count.value == n_late
    assert routed.late_count.value == n_late
    assert by_window(dropped_out.items) == {kw: len(idx) for kw, idx in expected.items()}
    assert by_window(routed_out.items) == {
        kw: [(events[i][1], events[i][2]) for i in sorted(idx, key=lambda i: events[i][1])]
        for kw, idx in expected.items()
    }
    assert Counter(late_out.items) == Counter(
        (k, (t, v)) for (k, t, v), is_late in zip(events, late) if is_late
    )


def test_late_event_after_its_window_closed():
    # batch 1: t=0.5; batch 2: t=1.0 moves the watermark to 1.0 = end of [0, 1);
    # then t=0.75 and t=0.875 are late; t=1.5 is on time
    events = [("k", 0.5, 1), ("k", 1.0, 2), ("k", 0.75, 4), ("k", 0.875, 8), ("k", 1.5, 16)]
    flow = Dataflow()
    ev = source(flow, events, max_delay=0.0, batch_size=1)
    counted = keyed_values(ev).window(Tumbling(1.0), late=True).sum()
    out, late_out = counted.collect(), counted.late.collect()
    run(flow)
    assert sorted(out.items) == [("k", Window(0.0, 1.0), 1), ("k", Window(1.0, 2.0), 18)]
    assert counted.late_count.value == 2
    assert late_out.items == [("k", 4), ("k", 8)]


def test_late_sliding_event_still_counts_in_its_open_windows():
    # Sliding(2, 1): 1.5 is in [0, 2) and [1, 3). After t=2.0 (watermark 2.0)
    # [0, 2) is emitted, [1, 3) is not: 1.5 counts in [1, 3) and is not late.
    events = [("k", 0.5, 1), ("k", 2.0, 1), ("k", 1.5, 1)]
    flow = Dataflow()
    counts = keyed_values(source(flow, events, max_delay=0.0, batch_size=1)).window(Sliding(2.0, 1.0)).count()
    out = counts.collect()
    run(flow)
    assert by_window(out.items) == {
        ("k", Window(-1.0, 1.0)): 1,
        ("k", Window(0.0, 2.0)): 1,
        ("k", Window(1.0, 3.0)): 2,
        ("k", Window(2.0, 4.0)): 1,
    }
    assert counts.late_count.value == 0


@TWO
@given(
    st.sampled_from([Tumbling(1.0), Tumbling(0.25), Sliding(2.0, 0.5), Session(0.5), Session(2.0)]),
    streams(disorder=4.0, max_size=60),
    st.sampled_from([1, 3, 8]),
    st.sampled_from([0.0, 0.5]),
)
def test_late_events_two_kernels_come_out_once_and_only_from_behind_their_kernels_watermark(
        window, events, batch_size, max_delay):
    """With `late=True` (no combiner) the key's owner decides, by its
    watermark: the minimum over both kernels. Which of the events behind
    their own kernel's watermark are late then depends on how far the other
    kernel has got (see the scripted test below for exact cases); but an
    event on time on its own kernel is never late (that kernel's watermark
    reaches the owner after it), every late event comes out of `.late`
    once, and every other one is in its windows: for tumbling windows,
    exactly the brute-force windows of the events that were not late."""
    events = [(key, t, i) for i, (key, t, _) in enumerate(events)]  # a value says which event it is
    flow = Dataflow()
    windowed = keyed_values(source(flow, events, max_delay=max_delay, batch_size=batch_size))
    collected = windowed.window(window, late=True).collect()
    out, late_out = collected.collect(), collected.late.collect()
    run(flow, cores=2, clock=VirtualClock())
    late = sorted(i for _, i in late_out.items)
    assert len(late) == len(set(late)) == collected.late_count.value
    assert all(events[i][0] == key for key, i in late_out.items)
    _, behind_their_own = replay_per_kernel(window, events, max_delay, batch_size, 2)
    assert set(late) <= {i for i, behind in enumerate(behind_their_own) if behind}
    results = by_window(out.items)
    counted = {i for values in results.values() for i in values}
    assert counted | set(late) == set(range(len(events)))
    if isinstance(window, Tumbling):
        on_time = [e if i not in late else None for i, e in enumerate(events)]
        expected = members(window, [e for e in on_time if e is not None])
        kept = [i for i, e in enumerate(on_time) if e is not None]
        assert {kw: sorted(values) for kw, values in results.items()} == {
            kw: sorted(kept[j] for j in idx) for kw, idx in expected.items()}
    event(f"late events: {'some' if late else 'none'}")


class Scripted(Source):
    """One kernel's script: ("emit", records) emits one batch (its watermark
    moves after it); ("wait", fd, n) waits until n bytes came on a pipe
    (woken by the loop, failing after 10 s); ("signal", fd) writes a byte."""

    def __init__(self, scripts):
        self.scripts = scripts

    def open(self, context):
        self.steps = list(self.scripts[context.index])
        self.deadline = None

    def poll(self):
        while self.steps:
            step = self.steps[0]
            if step[0] == "emit":
                self.steps.pop(0)
                self.emit(list(step[1]))
                return True
            if step[0] == "signal":
                self.steps.pop(0)
                os.write(step[1], b"s")
                continue
            _, fd, wanted = step
            try:
                got = len(os.read(fd, wanted))
            except BlockingIOError:
                got = 0
            loop = self.context.kernel.loop
            if got == wanted:
                loop.remove_reader(fd)
                self.steps.pop(0)
                self.deadline = None
                continue
            self.steps[0] = ("wait", fd, wanted - got)
            if self.deadline is None:
                self.deadline = time.monotonic() + 10.0
                loop.add_reader(fd, self.wake)
                self.context.kernel.call_later(10.0, self.wake)
            elif time.monotonic() > self.deadline:
                raise RuntimeError(f"kernel {self.context.index}: no signal on fd {fd} in 10 s")
            return None
        return False


class SignalOnce(Operator):
    """Passes its batches on, and writes a byte to `fd` once: at its first
    batch (`on="batch"`), once its watermark reaches `at` (`on="watermark"`),
    or when its inputs all go idle (`on="idle"`); only on kernel `kernel`
    if given. Lets a scripted source wait until an operator has seen that."""

    def __init__(self, fd, on, at=None, kernel=None):
        self.fd, self.on, self.at, self.kernel = fd, on, at, kernel

    def open(self, context):
        self.told = self.kernel is not None and context.index != self.kernel

    def _tell(self):
        if not self.told:
            self.told = True
            os.write(self.fd, b"s")

    def on_batch(self, port, batch):
        self.emit(batch)
        if self.on == "batch":
            self._tell()

    def on_watermark(self, watermark):
        if self.on == "watermark" and watermark >= self.at:
            self._tell()

    def on_idle(self):
        if self.on == "idle":
            self._tell()


# (t, value) of a scripted run on two kernels; a value says which event it is.
_VALUE = {10.0: 1, 0.5: 2, 5.5: 4, 6.5: 8, 9.5: 16, 6.0: 32, 5.75: 64, 6.25: 128}


@pytest.mark.parametrize("combiner", [False, True], ids=["owner decides", "combiner"])
def test_which_events_are_late_on_two_kernels(combiner):
    """Kernel 1 reads 6.0 (watermark 6), kernel 0 reads 10.0 (watermark
    10). Once the window's watermark is 6 on both kernels, kernel 0 reads
    0.5, 5.5, 6.5, 9.5 in one batch, all behind its own watermark; then
    (kernel 1 waits for that batch to have reached the window) kernel 1
    reads 5.75 and 6.25. Without a combiner (late=True) the window's
    watermark, the minimum over the kernels, is 6 for both late batches:
    0.5, 5.5 and 5.75 are late, 6.5 and 9.5 count (their windows end after
    6). With the combiner (count, sum: README, "Pre-aggregation") each kernel
    decides by its own watermark: kernel 0 drops its whole batch (10 >= 7,
    10 >= 10), kernel 1 drops 5.75."""
    gate_read, gate_write = os.pipe()  # the window's watermark reached 6 (one byte per kernel)
    go_read, go_write = os.pipe()  # kernel 0's late batch reached the window
    os.set_blocking(gate_read, False)
    os.set_blocking(go_read, False)
    late_batch = [("k", t, _VALUE[t]) for t in (0.5, 5.5, 6.5, 9.5)]
    scripts = {
        0: [("emit", [("k", 10.0, 1)]), ("wait", gate_read, 2), ("emit", late_batch)]
           + ([("signal", go_write)] if combiner else []),  # its own watermark decides: no need to wait
        1: [("emit", [("k", 6.0, 32)]), ("wait", go_read, 1),
            ("emit", [("k", 5.75, 64), ("k", 6.25, 128)])],
    }
    flow = Dataflow()
    def scripted():
        return EventTimeSource(Scripted(scripts), timestamp=lambda e: e[1])

    stream = flow.source(scripted, name="scripted")
    windowed = keyed_values(stream).window(Tumbling(1.0), late=not combiner)
    sums = windowed.sum()
    sums.apply(lambda: SignalOnce(gate_write, "watermark", 6.0), name="gate")
    if not combiner:
        sums.late.apply(lambda: SignalOnce(go_write, "batch"), name="go")
        late_out = sums.late.collect()
    out = sums.collect()
    try:
        run(flow, cores=2)
    finally:
        for fd in (gate_read, gate_write, go_read, go_write):
            os.close(fd)
    got = {w.start: total for _, w, total in out.items}
    if combiner:
        assert got == {6.0: 32 + 128, 10.0: 1}
        assert sums.late_count.value == 5
    else:
        assert got == {6.0: 32 + 8 + 128, 9.0: 16, 10.0: 1}
        assert sums.late_count.value == 3
        assert sorted(late_out.items) == [("k", 2), ("k", 4), ("k", 64)]


# -- 3. joins ---------------------------------------------------------------------------------


def join_reference(window, left, right) -> Counter:
    out: Counter = Counter()
    if isinstance(window, Session):
        # sessions form over both sides' events of a key together
        both = [(k, t, ("L", v)) for k, t, v in left] + [(k, t, ("R", v)) for k, t, v in right]
        for (key, w), idx in members(window, both).items():
            lefts = [both[i][2][1] for i in idx if both[i][2][0] == "L"]
            rights = [both[i][2][1] for i in idx if both[i][2][0] == "R"]
            out.update((key, w, (lv, rv)) for lv in lefts for rv in rights)
        return out
    for lk, lt, lv in left:
        for rk, rt, rv in right:
            if lk == rk:
                for w in set(aligned_windows(window, lt)) & set(aligned_windows(window, rt)):
                    out[(lk, w, (lv, rv))] += 1
    return out


def check_join(window, left, right, batch_size, cores):
    flow = Dataflow()
    lhs = keyed_values(source(flow, left, batch_size=batch_size))
    rhs = keyed_values(source(flow, right, batch_size=max(1, batch_size // 2)))
    joined = lhs.join(rhs, window)
    out = joined.collect()
    run(flow, cores=cores)
    for _, w, _ in out.items:
        assert type(w) is Window
    assert Counter(out.items) == join_reference(window, left, right)
    assert joined.late_count.value == 0


JOIN_WINDOWS = [
    Tumbling(1.0),
    Tumbling(0.25),
    Sliding(2.0, 0.5),
    Sliding(0.5, 1.25),
    Session(0.5),
    Session(1.0),
]


@ONE
@given(st.sampled_from(JOIN_WINDOWS), streams(max_size=25), streams(max_size=25), batch_sizes)
def test_join_one_kernel(window, left, right, batch_size):
    check_join(window, left, right, batch_size, cores=1)


@TWO
@given(st.sampled_from(JOIN_WINDOWS), streams(max_size=25), streams(max_size=25), batch_sizes)
def test_join_two_kernels(window, left, right, batch_size):
    check_join(window, left, right, batch_size, cores=2)


def test_join_with_one_empty_side_is_empty():
    flow = Dataflow()
    lhs = keyed_values(source(flow, [("k", 0.5, 1)]))
    rhs = keyed_values(source(flow, []))
    out = lhs.join(rhs, Tumbling(1.0)).collect()
    run(flow)
    assert out.items == []


# -- 4. edges -----------------------------------------------------------------------------------


def windows_for(stamps, window) -> list:
    flow = Dataflow()
    events = [("k", t, i) for i, t in enumerate(stamps)]
    out = keyed_values(source(flow, events, max_delay=0.0, batch_size=100)).window(window).collect().collect()
    run(flow)
    return sorted((w.start, w.end, values) for _, w, values in out.items)


def test_datetimes_give_the_same_windows_as_seconds():
    base = dt.datetime(2024, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
    offsets = [0.0, 0.25, 59.75, 60.0, 61.5, 185.0]
    seconds = [base.timestamp() + o for o in offsets]
    aware = [base + dt.timedelta(seconds=o) for o in offsets]
    elsewhere = [t.astimezone(dt.timezone(dt.timedelta(hours=-5, minutes=-30))) for t in aware]
    naive = [t.replace(tzinfo=None) for t in aware]
    for window in (Tumbling(60.0), Sliding(120.0, 60.0), Session(30.0)):
        expected = windows_for(seconds, window)
        assert expected
        assert windows_for(aware, window) == expected
        assert windows_for(elsewhere, window) == expected
        assert windows_for(naive, window) == expected
    assert windows_for(seconds, Tumbling(60.0))[0][:2] == (base.timestamp(), base.timestamp() + 60.0)


def test_an_event_on_a_boundary_belongs_to_the_window_starting_there():
    assert windows_for([1.0, 0.875, 2.0], Tumbling(1.0)) == [
        (0.0, 1.0, [1]),
        (1.0, 2.0, [0]),
        (2.0, 3.0, [2]),
    ]
    assert windows_for([2.0], Sliding(2.0, 1.0)) == [(1.0, 3.0, [0]), (2.0, 4.0, [0])]
    assert windows_for([-1.0, -0.5], Tumbling(1.0)) == [(-1.0, 0.0, [0, 1])]
    # exactly gap apart: two sessions; a little less: one
    assert windows_for([0.0, 1.0], Session(1.0)) == [(0.0, 1.0, [0]), (1.0, 2.0, [1])]
    assert windows_for([0.0, 0.875], Session(1.0)) == [(0.0, 1.875, [0, 1])]


@pytest.mark.parametrize("window", [Tumbling(1.0), Sliding(2.0, 1.0), Sliding(1.0, 1.5), Session(1.0)])
@pytest.mark.parametrize("how", ["count", "sum", "reduce", "collect", "join"])
def test_a_time_too_large_for_its_windows_is_named_not_dropped(window, how):
    # A time in nanoseconds taken for seconds (time.time_ns()): float seconds
    # are 256 apart at 1.7e18, so a window's end rounds to its start. Sliding
    # windows put such an event in no window (no result, not late: silently
    # lost), tumbling windows and sessions in an empty one [t, t).
    t = 1.7e18
    flow = Dataflow()
    values = keyed_values(source(flow, [("k", t, 1), ("k", t + 512, 2)], max_delay=0.0))
    windowed = values.window(window)
    if how == "join":
        values.join(values, window).collect()
    elif how == "reduce":
        windowed.reduce(operator.add).collect()
    else:
        getattr(windowed, how)().collect()
    with pytest.raises(KernelError, match=r"function 'window' raised TimeTooLarge: timestamp 1\.7e\+18 is "
                       r"too large for .* windows(.|\n)*on record: \('k', 1\)(.|\n)*time_ns"):
        run(flow)
    # at times in seconds the same flow runs
    assert windows_for([1.7e9, 1.7e9 + 0.5], window)


@pytest.mark.parametrize("window", [Sliding(1.0, 0.1), Tumbling(0.1), Sliding(0.1, 1.0)])
@pytest.mark.parametrize("cores", [1, 2])
def test_a_time_whose_floats_are_coarser_than_the_step_is_named_not_misplaced(window, cores):
    # Microseconds taken for seconds: floats are 0.25 apart at 1.7e15, so
    # windows starting every 0.1 s round together. Sliding(1.0, 0.1) gave
    # 26 results for 22 distinct windows (one (key, window) emitted twice),
    # of 0.75, 1.0 and 1.25 s; Tumbling(0.1) windows of 0.25 s.
    t = 1.7e15
    flow = Dataflow()
    keyed_values(source(flow, [("k", t + 0.25 * i, 1) for i in range(8)], max_delay=0.0)).window(
        window).count().collect()
    message = (r"raised TimeTooLarge: timestamp 17000000000000\d\d\.\d+ is too large for "
               + re.escape(repr(window)) + r" windows: float seconds are 0\.25 apart there")
    with pytest.raises(KernelError, match=message):
        run(flow, cores=cores)


def test_a_step_as_coarse_as_the_floats_still_gives_exact_windows():
    """At 1.7e15 floats are 0.25 apart: windows every 0.25 or 0.5 s are
    exact there (and on two kernels, by slices, the same)."""
    t = 1.7e15
    for window in (Sliding(2.0, 0.5), Tumbling(0.25)):
        for cores in (1, 2):
            flow = Dataflow()
            events = [("k", t + 0.25 * i, 1) for i in range(8)]
            out = keyed_values(source(flow, events, max_delay=0.0)).window(window).count().collect()
            run(flow, cores=cores)
            assert by_window(out.items) == {("k", w): len(i) for (_, w), i in members(window, events).items()}


def test_windows_serialize_as_json_pairs():
    flow = Dataflow()
    out = keyed_values(source(flow, [("k", 2.5, 3), ("k", 3.0, 4)])).window(Tumbling(2.0)).sum().collect()
    run(flow)
    assert json.dumps(out.items) == '[["k", [2.0, 4.0], 7]]'
    w = out.items[0][1]
    assert (w.start, w.end) == (2.0, 4.0) and w == (2.0, 4.0)
    assert json.dumps(Window(0.5, 1.5)) == "[0.5, 1.5]"


@pytest.mark.parametrize("cores", [1, 2])
def test_a_window_needs_timestamps(cores):
    flow = Dataflow()
    # refused when the flow is built: the source has no timestamp=
    with pytest.raises(KernelError, match=r"from_iterable \(step 0\).*timestamp"):
        flow.from_iterable([("k", 1), ("j", 2)]).key_by(lambda e: e[0]).window(Tumbling(1.0))


def test_a_join_needs_timestamps():
    flow = Dataflow()
    lhs = flow.from_iterable([("k", 1)]).key_by(lambda e: e[0])
    rhs = keyed_values(source(flow, [("k", 0.5, 1)]))
    with pytest.raises(KernelError, match="timestamp"):
        lhs.join(rhs, Tumbling(1.0))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Tumbling(0),
        lambda: Tumbling(-1.0),
        lambda: Tumbling(math.inf),
        lambda: Tumbling(math.nan),
        lambda: Sliding(0, 1.0),
        lambda: Sliding(1.0, 0),
        lambda: Sliding(-2.0, 1.0),
        lambda: Sliding(1.0, math.inf),
        lambda: Session(0.0),
        lambda: Session(-0.5),
        lambda: Session(math.inf),
    ],
)
def test_invalid_sizes_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("not_a_window", [1.0, "1s", None, Tumbling, (0.0, 1.0), Window(0.0, 1.0)])
def test_window_of_something_else_raises_type_error(not_a_window):
    flow = Dataflow()
    keyed = keyed_values(source(flow, [("k", 0.0, 1)]))
    with pytest.raises(TypeError):
        keyed.window(not_a_window)
    if not_a_window is None:
        return  # join(other, None) is the join without a window (test_join_unwindowed.py)
    with pytest.raises(TypeError):
        keyed.join(keyed, not_a_window)


@pytest.mark.parametrize("late", ["no", "false", 0, 1, None])
def test_late_other_than_true_or_false_is_refused_naming_the_step(late):
    """`late="no"` was taken for its truth value: the late stream was on."""
    flow = Dataflow()
    keyed = keyed_values(source(flow, [("k", 0.0, 1)]))
    steps = len(flow.graph.nodes)
    expected = (": late must be True (late events come out of the .late stream) or False "
                f"(they are dropped and counted), got {late!r}")
    with pytest.raises(ValueError) as info:
        keyed.window(Tumbling(1.0), late=late)
    assert str(info.value) == "window(Tumbling(1.0))" + expected
    with pytest.raises(ValueError) as info:
        keyed.join(keyed, Tumbling(1.0), late=late, name="pairs")
    assert str(info.value) == "pairs" + expected
    with pytest.raises(ValueError) as info:
        keyed.join(keyed, late=late)
    assert str(info.value) == "join" + expected
    assert len(flow.graph.nodes) == steps  # nothing was added


def test_late_stream_needs_late_true():
    flow = Dataflow()
    keyed = keyed_values(source(flow, [("k", 0.0, 1)]))
    with pytest.raises(AttributeError, match="late=True"):
        _ = keyed.window(Tumbling(1.0)).count().late
    with pytest.raises(AttributeError):
        _ = keyed.join(keyed, Tumbling(1.0)).late
    assert keyed.window(Tumbling(1.0), late=True).count().late is not None
