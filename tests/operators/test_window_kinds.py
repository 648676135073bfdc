"""Windows and windowed joins against brute-force references over the whole
input, on 1 and 2 kernels; late-event accounting against a replay of the
source's watermarks.

Timestamps are multiples of 1/8 so window arithmetic is exact in floats.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelError, VirtualClock, run
from operators import Session, Sliding, Tumbling, Window

ONE_CORE = settings(max_examples=40, deadline=None)
TWO_CORES = settings(max_examples=8, deadline=None)
KEYS = ["a", "b", "c", 7]


@st.composite
def event_streams(draw, max_delay: float = 1.0, size: int = 60):
    """(key, t, value) in arrival order: a rising clock plus a disorder of at
    most `max_delay`, so no event is late for a source with that max_delay."""
    n = draw(st.integers(0, size))
    clock, events = 0.0, []
    for _ in range(n):
        clock += draw(st.sampled_from([0.0, 0.125, 0.25, 0.5, 1.0, 2.5]))
        back = draw(st.integers(0, int(max_delay * 8))) / 8
        events.append((draw(st.sampled_from(KEYS)), clock - back, draw(st.integers(-5, 20))))
    return events


window_kinds = st.sampled_from([Tumbling(1.0), Tumbling(2.5), Sliding(2.0, 0.5), Sliding(1.0, 1.5),
                                Session(0.75), Session(2.0)])


# -- references ------------------------------------------------------------------


def windows_of(window, t: float) -> list[Window]:
    """Every aligned window containing t, by definition."""
    if isinstance(window, Tumbling):
        k = math.floor(t / window.size)
        return [Window(k * window.size, (k + 1) * window.size)]
    size, step = window.size, window.step
    k = math.floor(t / step)
    out = []
    while k * step + size > t:
        if k * step <= t:
            out.append(Window(k * step, k * step + size))
        k -= 1
    return out


def sessions_of(gap: float, stamps: list[tuple[float, int]]) -> list[tuple[Window, list[int]]]:
    """Sorted by time, split where consecutive events are gap or more apart.
    `stamps` is (t, arrival index); values come back in arrival order."""
    out, current = [], []
    for t, i in sorted(stamps):
        if current and t - current[-1][0] >= gap:
            out.append(current)
            current = []
        current.append((t, i))
    if current:
        out.append(current)
    return [(Window(c[0][0], c[-1][0] + gap), sorted(i for _, i in c)) for c in out]


def grouped(window, events) -> dict[tuple, list[int]]:
    """(key, window) -> indices of the events in it, in arrival order."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    if isinstance(window, Session):
        per_key = defaultdict(list)
        for i, (key, t, _v) in enumerate(events):
            per_key[key].append((t, i))
        for key, stamps in per_key.items():
            for w, indices in sessions_of(window.gap, stamps):
                groups[(key, w)] = indices
    else:
        for i, (key, t, _v) in enumerate(events):
            for w in windows_of(window, t):
                groups[(key, w)].append(i)
    return groups


def build(flow, events, max_delay, batch_size):
    return (flow.from_iterable(events, timestamp=lambda e: e[1], max_delay=max_delay, batch_size=batch_size)
                .key_by(lambda e: e[0]).map_values(lambda e: e[2]))


def as_dict(items) -> dict:
    out = {}
    for key, window, result in items:
        assert isinstance(window, Window)
        assert (key, window) not in out, "one result per key and window"
        out[(key, window)] = result
    return out


def check_all_aggregates(events, window, batch_size, cores):
    flow = Dataflow()
    values = build(flow, events, 1.0, batch_size)
    windowed = values.window(window)
    counts, sums = windowed.count(), windowed.sum()
    collected = windowed.collect()
    maxima = windowed.reduce(max)
    folded = windowed.fold(list, lambda acc, v: [*acc, v])
    handles = [s.collect() for s in (counts, sums, collected, maxima, folded)]
    run(flow, cores=cores)
    groups = grouped(window, events)
    value_of = [v for _k, _t, v in events]
    stamp_of = [t for _k, t, _v in events]
    expected_values = {kw: [value_of[i] for i in idx] for kw, idx in groups.items()}
    assert as_dict(handles[0].items) == {kw: len(v) for kw, v in expected_values.items()}
    assert as_dict(handles[1].items) == {kw: sum(v) for kw, v in expected_values.items()}
    assert as_dict(handles[3].items) == {kw: max(v) for kw, v in expected_values.items()}
    # collect: timestamp order; equal timestamps may come from either kernel first
    got = as_dict(handles[2].items)
    assert got.keys() == groups.keys()
    for kw, idx in groups.items():
        by_time = sorted(idx, key=lambda i: stamp_of[i])
        assert [stamp_of[i] for i in by_time] == sorted(stamp_of[i] for i in idx)
        assert sorted(got[kw]) == sorted(value_of[i] for i in idx)
        if cores == 1:
            assert got[kw] == [value_of[i] for i in by_time]
    folds = as_dict(handles[4].items)
    assert {kw: sorted(v) for kw, v in folds.items()} == {kw: sorted(v) for kw, v in expected_values.items()}
    if cores == 1:  # one kernel: arrival order is the input order
        assert folds == expected_values
    for stream in (counts, sums, collected, maxima, folded):
        assert stream.late_count.value == 0


@ONE_CORE
@given(event_streams(), window_kinds, st.sampled_from([1, 3, 16, 1000]))
def test_windows_equal_the_brute_force_reference_on_one_kernel(events, window, batch_size):
    check_all_aggregates(events, window, batch_size, cores=1)


@TWO_CORES
@given(event_streams(), window_kinds, st.sampled_from([1, 5, 1000]))
def test_windows_equal_the_brute_force_reference_on_two_kernels(events, window, batch_size):
    check_all_aggregates(events, window, batch_size, cores=2)


# -- late events -----------------------------------------------------------------------


def replay_lateness(window, events, max_delay, batch_size) -> list[bool]:
    """Which events the window operator finds late on one kernel: the source
    advances its watermark after each batch; an event is late when every
    window it belongs to has end <= the watermark before its batch."""
    late, watermark, newest = [], -math.inf, -math.inf
    for start in range(0, len(events), batch_size):
        batch = events[start : start + batch_size]
        for _k, t, _v in batch:
            late.append(all(w.end <= watermark for w in windows_of(window, t)))
        newest = max([newest, *(t for _k, t, _v in batch)])
        watermark = newest - max_delay
    return late


@ONE_CORE
@given(event_streams(max_delay=4.0), st.sampled_from([Tumbling(1.0), Sliding(2.0, 0.5)]),
       st.sampled_from([1, 2, 7]), st.sampled_from([0.0, 0.5, 1.0]))
def test_late_events_are_dropped_counted_and_can_be_routed(events, window, batch_size, max_delay):
    late = replay_lateness(window, events, max_delay, batch_size)
    flow = Dataflow()
    values = build(flow, events, max_delay, batch_size)
    dropped = values.window(window).count()
    dropped_out = dropped.collect()
    routed = values.window(window, late=True).count()
    routed_out, late_out = routed.collect(), routed.late.collect()
    run(flow, clock=VirtualClock())  # batches as replayed (test_windows.replay)
    # the on-time events, in every window of theirs that was still open
    on_time_counts: Counter = Counter()
    for (key, t, _v), is_late in zip(events, late):
        if not is_late:
            watermark_ok = [w for w in windows_of(window, t)]
            for w in watermark_ok:
                on_time_counts[(key, w)] += 1
    got = as_dict(dropped_out.items)
    assert sum(late) == dropped.late_count.value == routed.late_count.value
    assert got == as_dict(routed_out.items)
    assert sorted(late_out.items, key=repr) == sorted(
        ((k, v) for (k, _t, v), is_late in zip(events, late) if is_late), key=repr)
    if isinstance(window, Tumbling):
        assert got == dict(on_time_counts)
    else:  # sliding: an on-time event may miss those of its windows already emitted
        assert all(got.get(kw, 0) <= n for kw, n in on_time_counts.items())
        assert sum(got.values()) >= sum(1 for is_late in late if not is_late)


@TWO_CORES
@given(event_streams(max_delay=4.0), st.sampled_from([Tumbling(1.0), Sliding(2.0, 0.5)]),
       st.sampled_from([1, 3]))
def test_on_two_kernels_each_kernel_drops_what_is_behind_its_own_watermark(events, window, batch_size):
    """A windowed count() pre-aggregates per kernel (README, "Pre-aggregation"):
    an event is late when its own kernel's watermark (record i is kernel
    i % 2's) had passed every window of it before its batch; the others
    count in each of their windows that was still open there."""
    late = [False] * len(events)
    open_windows: Counter = Counter()  # (key, window) -> events counted in it
    for kernel in (0, 1):
        share = list(range(kernel, len(events), 2))
        flags = replay_lateness(window, [events[i] for i in share], 0.0, batch_size)
        for position, (i, is_late) in enumerate(zip(share, flags)):
            late[i] = is_late
            key, t, _v = events[i]
            # what the kernel's watermark was before this event's batch
            before = [events[j][1] for j in share[: position - position % batch_size]]
            watermark = max(before, default=-math.inf)
            open_windows.update((key, w) for w in windows_of(window, t) if w.end > watermark)
    flow = Dataflow()
    windowed = build(flow, events, 0.0, batch_size).window(window)
    counts = windowed.count()
    out = counts.collect()
    run(flow, cores=2, clock=VirtualClock())  # batches as replayed
    assert as_dict(out.items) == dict(open_windows)
    assert counts.late_count.value == sum(late)


# -- joins ----------------------------------------------------------------------------------


def join_reference(window, left, right) -> Counter:
    out: Counter = Counter()
    for lk, lt, lv in left:
        for rk, rt, rv in right:
            if lk != rk:
                continue
            for w in set(windows_of(window, lt)) & set(windows_of(window, rt)):
                out[(lk, w, (lv, rv))] += 1
    return out


@pytest.mark.parametrize("cores", [1, 2])
@settings(max_examples=10, deadline=None)
@given(event_streams(size=25), event_streams(size=25),
       st.sampled_from([Tumbling(1.0), Sliding(2.0, 1.0)]), st.sampled_from([1, 4, 1000]))
def test_joins_equal_a_nested_loop(cores, left, right, window, batch_size):
    flow = Dataflow()
    lhs = build(flow, left, 1.0, batch_size)
    rhs = build(flow, right, 1.0, batch_size)
    joined = lhs.join(rhs, window)
    out = joined.collect()
    run(flow, cores=cores)
    assert Counter(out.items) == join_reference(window, left, right)
    assert joined.late_count.value == 0


def test_session_join_pairs_values_of_merged_sessions():
    flow = Dataflow()
    left = build(flow, [("k", 0.0, 1), ("k", 5.0, 2)], 10.0, 10)
    right = build(flow, [("k", 0.5, 10), ("k", 20.0, 30)], 10.0, 10)
    out = left.join(right, Session(1.0)).collect()
    run(flow)
    assert sorted(out.items) == [("k", Window(0.0, 1.5), (1, 10))]


# -- edges -----------------------------------------------------------------------------------


def test_a_bridging_event_merges_two_sessions():
    events = [("k", 0.0, 1), ("k", 3.0, 2), ("k", 1.5, 4)]  # 1.5 is within 2 of both
    flow = Dataflow()
    out = build(flow, events, 5.0, 1).window(Session(2.0)).collect().collect()
    run(flow)
    assert out.items == [("k", Window(0.0, 5.0), [1, 4, 2])]


def test_an_event_on_a_boundary_opens_the_next_window():
    flow = Dataflow()
    out = build(flow, [("k", 1.0, 1), ("k", 0.999, 1)], 1.0, 10).window(Tumbling(1.0)).count().collect()
    run(flow)
    assert sorted(out.items) == [("k", Window(0.0, 1.0), 1), ("k", Window(1.0, 2.0), 1)]


def test_windows_are_json_friendly():
    flow = Dataflow()
    out = build(flow, [("k", 2.0, 3)], 0.0, 1).window(Tumbling(2.0)).sum().collect()
    run(flow)
    assert json.dumps(out.items) == '[["k", [2.0, 4.0], 3]]'
    assert out.items[0][1].start == 2.0 and out.items[0][1].end == 4.0


def test_windows_need_timestamps():
    flow = Dataflow()
    with pytest.raises(KernelError, match="timestamp="):  # when the flow is built
        flow.from_iterable([("k", 1)]).key_by(lambda e: e[0]).window(Tumbling(1.0))


@pytest.mark.parametrize("make", [lambda: Tumbling(0), lambda: Tumbling(-1), lambda: Tumbling(math.inf),
                                  lambda: Sliding(1, 0), lambda: Session(math.nan), lambda: Tumbling("1")])
def test_bad_window_sizes_are_refused(make):
    with pytest.raises(ValueError, match="positive number of seconds"):
        make()


@pytest.mark.parametrize("make", [lambda: Tumbling(10**400), lambda: Sliding(10**400, 1),
                                  lambda: Sliding(1, 10**400), lambda: Session(10**400)])
def test_a_size_no_float_can_hold_is_refused_as_a_bad_size(make):
    # (it raised float()'s bare OverflowError: int too large to convert to float)
    with pytest.raises(ValueError, match=r"must be a positive number of seconds a float can hold, got an "
                                         r"int of 1329 bits"):
        make()


def test_window_and_join_arguments_are_checked():
    flow = Dataflow()
    keyed = flow.from_iterable([1], timestamp=float).key_by(str)
    with pytest.raises(TypeError, match="Tumbling, Sliding or Session"):
        keyed.window(1.0)
    with pytest.raises(TypeError, match="keyed stream"):
        keyed.join(flow.from_iterable([2]), Tumbling(1.0))
    with pytest.raises(AttributeError, match="late=True"):
        _ = keyed.window(Tumbling(1.0)).count().late


def test_a_raising_reduce_names_the_window_step_and_the_record():
    def boom(a, b):
        raise ValueError("no")

    flow = Dataflow()
    build(flow, [("k", 0.0, 1), ("k", 0.5, 2)], 0.0, 10).window(Tumbling(1.0)).reduce(boom).collect()
    with pytest.raises(KernelError) as info:
        run(flow)
    assert "window reduce(boom) Tumbling(1.0)" in str(info.value)
    assert "('k', 2)" in str(info.value)
