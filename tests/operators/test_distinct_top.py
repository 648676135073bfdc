"""`distinct()` (of a stream, of a keyed stream, within tumbling windows)
and `WindowedStream.top(k, by=...)`, exact against brute-force references
on 1, 2 and 3 kernels (where arrival order between kernels is free, the
checks take only what it cannot change). The operator's window expiry and
lateness are checked on the operator itself.

Timestamps are multiples of 1/8 so window arithmetic is exact in floats.
"""

from __future__ import annotations

import logging
import math
from collections import Counter, defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelError, Operator, OperatorError, TimedBatch, run
from operators import Distinct, Session, Sliding, Tumbling, Window

VALUES = st.sampled_from(["x", "y", "z", 1, 2, (1, 2)])
KEYS = st.sampled_from(["a", "b", "c"])


@st.composite
def timed(draw, items, max_delay: float = 1.0, size: int = 40):
    """(item, t) in arrival order, at most `max_delay` out of order."""
    clock, events = 0.0, []
    for _ in range(draw(st.integers(0, size))):
        clock += draw(st.sampled_from([0.0, 0.125, 0.5, 1.0, 2.0]))
        back = draw(st.integers(0, int(max_delay * 8))) / 8
        events.append((draw(items), clock - back))
    return events


def first_each(records) -> list:
    return list(dict.fromkeys(records))


class Stamped(Operator):
    def on_batch(self, port, batch):
        self.emit([(record, stamp) for record, stamp in zip(batch, batch.timestamps)])


@settings(max_examples=15, deadline=None)
@given(st.lists(VALUES, max_size=40), st.sampled_from([1, 3, 100]), st.sampled_from([1, 2, 3]))
def test_a_streams_distinct_records(records, batch_size, cores):
    flow = Dataflow()
    out = flow.from_iterable(records, batch_size=batch_size).distinct().collect()
    run(flow, cores=cores)
    if cores == 1:
        assert out.items == first_each(records)
    assert Counter(out.items) == Counter(set(records))


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(KEYS, VALUES), max_size=40), st.sampled_from([1, 2, 3]))
def test_a_keyed_streams_distinct_pairs(pairs, cores):
    flow = Dataflow()
    keyed = flow.from_iterable(pairs, batch_size=3).key_by(lambda p: p[0]).map_values(lambda p: p[1])
    out = keyed.distinct().collect()
    run(flow, cores=cores)
    if cores == 1:
        assert out.items == first_each(pairs)
    assert Counter(out.items) == Counter(set(pairs))


def tumbling_number(size: float, t: float) -> int:
    j = math.floor(t / size)
    while j * size > t:
        j -= 1
    while (j + 1) * size <= t:
        j += 1
    return j


@settings(max_examples=15, deadline=None)
@given(timed(VALUES), st.sampled_from([0.5, 1.0, 3.0]), st.sampled_from([1, 4, 100]),
       st.sampled_from([1, 2, 3]))
def test_distinct_within_a_window_is_the_first_of_each_value_per_window(events, size, batch_size, cores):
    flow = Dataflow()
    source = flow.from_iterable(events, timestamp=lambda e: e[1], max_delay=1.0, batch_size=batch_size)
    out = source.map(lambda e: e[0]).distinct(within=Tumbling(size)).apply(Stamped).collect()
    run(flow, cores=cores)
    got = Counter((value, tumbling_number(size, stamp)) for value, stamp in out.items)
    assert got == Counter({(value, tumbling_number(size, t)) for value, t in events})
    assert {(v, s) for v, s in out.items} <= set(events)  # each at the time of one of its records
    if cores == 1:
        first = first_each((v, tumbling_number(size, t)) for v, t in events)
        assert [(v, tumbling_number(size, s)) for v, s in out.items] == first


def joined_by_loop(lefts, rights, size: float) -> set:
    """Every `(key, window, (l, r))` of a tumbling-window join, as a set."""
    def windows(events):
        by = defaultdict(list)
        for key, value, t in events:
            by[key, tumbling_number(size, t)].append(value)
        return by

    left, right = windows(lefts), windows(rights)
    return {(key, (n * size, (n + 1) * size), (lv, rv))
            for (key, n), values in left.items() for lv in values for rv in right.get((key, n), ())}


def keyed_values(flow, events):
    """`(key, value)` pairs of `(key, value, t)` events, at time t."""
    source = flow.from_iterable(events, timestamp=lambda e: e[2])
    return source.key_by(lambda e: e[0]).map_values(lambda e: e[1])


KEYED_EVENTS = st.lists(st.tuples(KEYS, st.sampled_from(["x", "y"]), st.sampled_from([0.0, 0.125, 0.5, 1.0])),
                        max_size=30)


@settings(max_examples=15, deadline=None)
@given(KEYED_EVENTS, KEYED_EVENTS, st.sampled_from([0.5, 1.0]), st.booleans(), st.sampled_from([1, 2, 3]))
def test_a_window_joins_distinct_results_stay_on_their_keys_kernel(lefts, rights, size, within, cores):
    """A window's results come out on the kernel that owns their key, and
    equal results have equal keys: `distinct()` of them keys them there
    (no exchange) and still gives each result once (a value twice in a
    window makes its pairs twice)."""
    def in_time(events):  # times rising: nothing late
        clock, out = 0.0, []
        for key, value, step in events:
            clock += step
            out.append((key, value, clock))
        return out

    lefts, rights = in_time(lefts), in_time(rights)
    flow = Dataflow()
    joined = keyed_values(flow, lefts).join(keyed_values(flow, rights), Tumbling(size))
    distinct = joined.distinct(within=Tumbling(size) if within else None, name="once")
    out = distinct.collect()
    keyed_there = next(node for node in flow.graph.nodes if node.name == "once")
    assert [(edge.source.name, edge.exchange) for edge in keyed_there.inputs] == [("once: by key", False)]
    run(flow, cores=cores)
    expected = joined_by_loop(lefts, rights, size)
    got = Counter((key, tuple(window), pair) for key, window, pair in out.items)
    assert got == Counter(expected)


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_a_window_joins_repeated_pairs_come_once_after_distinct(cores):
    lefts = [("a", "x", 0.1), ("b", "x", 0.2), ("a", "x", 0.3), ("a", "x", 1.1)]
    rights = [("a", "y", 0.5), ("b", "y", 0.6), ("a", "y", 1.5)]
    flow = Dataflow()
    joined = keyed_values(flow, lefts).join(keyed_values(flow, rights), Tumbling(1.0))
    every, once = joined.collect(), joined.distinct().collect()
    run(flow, cores=cores)
    pair = ("x", "y")
    first_a, first_b, second_a = ("a", (0.0, 1.0), pair), ("b", (0.0, 1.0), pair), ("a", (1.0, 2.0), pair)
    assert Counter((k, tuple(w), p) for k, w, p in every.items) == {first_a: 2, first_b: 1, second_a: 1}
    assert Counter((k, tuple(w), p) for k, w, p in once.items) == {first_a: 1, first_b: 1, second_a: 1}


def late_by_loop(events, size: float, max_delay: float) -> int:
    """One kernel, one record a batch: a record is late when its window
    ended at or before the watermark (the largest time so far less the
    delay) that the records before it set."""
    watermark, late = -math.inf, 0
    for _, t in events:
        if (tumbling_number(size, t) + 1) * size <= watermark:
            late += 1
        watermark = max(watermark, t - max_delay)
    return late


@settings(max_examples=15, deadline=None)
@given(timed(VALUES, max_delay=3.0), st.sampled_from([0.5, 1.0]))
def test_late_count_is_the_records_whose_window_had_ended(events, size):
    """The source allows 0.25 s of disorder, the events have up to 3 s:
    one kernel counts exactly the late records of a plain loop; two and
    three kernels (whose watermark at the owner can only lag) no more."""
    counts = {}
    for cores in (1, 2, 3):
        flow = Dataflow()
        source = flow.from_iterable(events, timestamp=lambda e: e[1], max_delay=0.25, batch_size=1)
        distinct = source.map(lambda e: e[0]).distinct(within=Tumbling(size))
        out = distinct.apply(Stamped).collect()
        run(flow, cores=cores)
        counts[cores] = distinct.late_count.value
        assert {(v, tumbling_number(size, s)) for v, s in out.items} <= {
            (v, tumbling_number(size, t)) for v, t in events}
    assert counts[1] == late_by_loop(events, size, 0.25)
    assert 0 <= counts[2] <= counts[1] and 0 <= counts[3] <= counts[1]


def test_a_keyed_distinct_counts_late_pairs_too():
    flow = Dataflow()
    events = [("k", 0.5), ("k", 3.0), ("k", 0.7), ("j", 0.9)]  # the last two: window [0, 1) ended at 2.0
    source = flow.from_iterable(events, timestamp=lambda e: e[1], max_delay=1.0, batch_size=1)
    distinct = source.key_by(lambda e: e[0]).map_values(lambda e: "v").distinct(within=Tumbling(1.0))
    out = distinct.collect()
    run(flow)
    assert out.items == [("k", "v"), ("k", "v")] and distinct.late_count.value == 2


# At 1.7e18 (nanoseconds taken for seconds) float seconds are 256 apart and
# window [t, t + 1) rounds to [t, t): "b", at the same time as "a" and never
# seen before, was counted late and dropped. At 1.7e15 (microseconds taken
# for seconds) floats are 0.25 apart, so Tumbling(0.1) windows there are
# 0.25 s wide (the window aggregates raise TimeTooLarge, test_windows):
# distinct(within=Tumbling(0.1)) put "a" at t and t + 0.25 in windows 0.25 s
# apart and passed both on.
TOO_LARGE = {
    "past every window": (1.0, [("a", 1.7e18), ("b", 1.7e18), ("c", 1.7e18 + 1024)],
                          "TimeTooLarge: timestamp 1.7e+18 is too large for Tumbling(1.0) windows: "
                          "float seconds are 256.0 apart there, so no window [start, end) of that size "
                          "can hold it"),
    "coarser than the window": (0.1, [("a", 1.7e15), ("a", 1.7e15 + 0.25), ("b", 1.7e15 + 0.5)],
                                "TimeTooLarge: timestamp 1700000000000000.0 is too large for Tumbling(0.1) "
                                "windows: float seconds are 0.25 apart there, so no window [start, end) of "
                                "that size can hold it"),
}


@pytest.mark.parametrize("case", list(TOO_LARGE))
@pytest.mark.parametrize("keyed", [False, True])
def test_a_time_too_large_for_the_window_is_named_as_windows_name_it(keyed, case):
    size, events, said = TOO_LARGE[case]
    flow = Dataflow()
    source = flow.from_iterable(events, timestamp=lambda e: e[1], batch_size=1)
    if keyed:
        source.key_by(lambda e: e[0]).map_values(lambda e: 1).distinct(within=Tumbling(size)).collect()
    else:
        source.map(lambda e: e[0]).distinct(within=Tumbling(size)).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    err = info.value
    assert err.operator == f"distinct within Tumbling({size}) (step 3)"
    assert (err.function, err.record) == ("window", "('a', 1)" if keyed else "'a'")
    assert err.error == said
    assert "time_ns" in err.hint



@settings(max_examples=400, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1e9), st.floats(allow_nan=False, allow_infinity=False))
def test_coarse_from_is_where_floats_are_further_apart_than_the_step(step, stamp):
    """distinct compares each record's time with `coarse_from(size)` instead
    of calling math.ulp a record: the same answer as `too_coarse`, the
    brute check, everywhere (and at the bound's float and the one below)."""
    from operators.windows._strategy import coarse_from, too_coarse

    bound = coarse_from(step)
    for t in (stamp, -stamp, bound, math.nextafter(bound, 0), -bound):
        assert (not -bound < t < bound) == too_coarse(t, step), (step, t, bound)

# -- the operator: windows forgotten, late records --------------------------------------


class Context:
    logger = logging.getLogger("test")


def wired(within):
    op = Distinct(within)
    op.name, op.context = "distinct", Context()
    op.out = []
    op.emit = op.out.extend
    op.open(op.context)
    return op


def test_a_windows_records_are_forgotten_once_the_watermark_passes_its_end():
    op = wired(Tumbling(1.0))
    op.on_batch(0, TimedBatch([("k", "v"), ("k", "v"), ("k", "v")], [0.25, 0.5, 1.25]))
    assert op.out == [("k", "v"), ("k", "v")]  # once per window
    assert sorted(op.seen) == [0, 1]
    op.on_watermark(1.0)
    assert sorted(op.seen) == [1]
    op.on_batch(0, TimedBatch([("k", "v"), ("k", "w")], [0.75, 1.5]))  # window 0 ended: late
    assert op.out[2:] == [("k", "w")] and op.late == 1
    restored = wired(Tumbling(1.0))
    restored.restore(op.on_epoch(1))
    restored.on_watermark(2.0)  # the restored windows are in its heap: forgotten too
    assert dict(restored.seen) == {} and restored.late == 1


# -- top(k) -----------------------------------------------------------------------------


def windows_of(window, t: float) -> list[Window]:
    if isinstance(window, Tumbling):
        j = tumbling_number(window.size, t)
        return [Window(j * window.size, (j + 1) * window.size)]
    k, out = math.floor(t / window.step), []
    while k * window.step + window.size > t:
        if k * window.step <= t:
            out.append(Window(k * window.step, k * window.step + window.size))
        k -= 1
    return out


def sessions(gap: float, items: list) -> list:
    """items (t, arrival, value) of one key -> [(Window, [values in arrival order])]."""
    out, current = [], []
    for item in sorted(items):
        if current and item[0] - current[-1][0] >= gap:
            out.append(current)
            current = []
        current.append(item)
    if current:
        out.append(current)
    return [(Window(c[0][0], c[-1][0] + gap), [v for _, _, v in sorted(c, key=lambda x: x[1])]) for c in out]


def grouped(window, events) -> dict:
    """(key, window) -> values in arrival order."""
    groups: dict = defaultdict(list)
    if isinstance(window, Session):
        per_key = defaultdict(list)
        for i, ((key, value), t) in enumerate(events):
            per_key[key].append((t, i, value))
        for key, items in per_key.items():
            for w, values in sessions(window.gap, items):
                groups[(key, w)] = values
        return groups
    for (key, value), t in events:
        for w in windows_of(window, t):
            groups[(key, w)].append(value)
    return groups


def rank(value) -> int:
    return value // 3  # many ties


@settings(max_examples=20, deadline=None)
@given(timed(st.tuples(KEYS, st.integers(0, 12))), st.sampled_from([1, 2, 3]),
       st.sampled_from([Tumbling(1.0), Sliding(2.0, 0.5), Session(0.75)]), st.sampled_from([1, 2, 3]))
def test_top_k_per_key_and_window(events, k, window, cores):
    flow = Dataflow()
    source = flow.from_iterable(events, timestamp=lambda e: e[1], max_delay=1.0, batch_size=3)
    values = source.key_by(lambda e: e[0][0]).map_values(lambda e: e[0][1])
    out = values.window(window).top(k, by=rank).collect()
    run(flow, cores=cores)
    groups = grouped(window, events)
    expected = {kw: sorted(values, key=lambda v: -rank(v))[:k] for kw, values in groups.items()}
    got = {(key, w): best for key, w, best in out.items}
    assert len(got) == len(out.items)
    if cores == 1:  # arrival order is the input's: ties exact
        assert got == expected
    else:  # ties between kernels may arrive either way round
        assert {kw: [rank(v) for v in best] for kw, best in got.items()} == {
            kw: [rank(v) for v in best] for kw, best in expected.items()}
        for kw, best in got.items():
            assert not Counter(best) - Counter(grouped(window, events)[kw])


# -- errors -----------------------------------------------------------------------------


def test_arguments_are_checked_when_the_flow_is_built():
    flow = Dataflow()
    timed_source = flow.from_iterable([("a", 1.0)], timestamp=lambda e: e[1])
    windowed = timed_source.key_by(lambda e: e[0]).window(Tumbling(1.0))
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"top\(k\) needs a whole number"):
            windowed.top(k)
    with pytest.raises(TypeError, match=r"top\(by=...\) needs a function"):
        windowed.top(1, by="price")
    with pytest.raises(TypeError, match="takes a Tumbling window"):
        timed_source.distinct(within=Sliding(2.0, 1.0))
    untimed = flow.from_iterable(["a"])
    with pytest.raises(KernelError, match=r"distinct\(within=...\) needs event time.*a source without"):
        untimed.distinct(within=Tumbling(1.0))


def test_a_raising_by_names_the_step_the_function_and_the_record():
    def price(bid):
        return bid["price"]

    flow = Dataflow()
    source = flow.from_iterable([("a", 0.5, {"price": 1}), ("a", 0.7, {})], timestamp=lambda e: e[1])
    source.key_by(lambda e: e[0]).map_values(lambda e: e[2]).window(Tumbling(1.0)).top(1, by=price).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert "window top(1)" in info.value.operator and "price" in info.value.function
    assert "('a', {})" in str(info.value)


@pytest.mark.parametrize("cores", [1, 2])
def test_an_unhashable_window_result_is_named_with_why(cores):
    """A window's results are keyed by their key for distinct(): the error
    names the result, not the pair made of it (found in review)."""
    flow = Dataflow()
    events = flow.from_iterable([("a", 1, 0.1), ("a", 2, 0.2)], timestamp=lambda e: e[2])
    lists = events.key_by(lambda e: e[0]).map_values(lambda e: e[1]).window(Tumbling(1.0)).collect()
    lists.distinct().collect()
    with pytest.raises(KernelError) as info:
        run(flow, cores=cores)
    message = str(info.value)
    assert "'hash(record)'" in message and "on record: ('a', Window(0.0, 1.0), [1, 2])" in message, message
    assert "a record must be hashable" in message


def test_an_unhashable_record_is_named():
    flow = Dataflow()
    flow.from_iterable(["ok", ["no"]]).distinct().collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert "hash(record)" in str(info.value) and "['no']" in str(info.value)
