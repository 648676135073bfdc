"""Window results carry event time (their window's `max_timestamp`, the
largest float below its end), so they can be keyed and windowed again:
exact against a brute-force reference on 1, 2 and 3 kernels. A window over
records whose event time was lost names the step that lost it, when the
flow is built.

Timestamps are multiples of 1/8 so window arithmetic is exact in floats.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelError, Operator, run
from operators import Session, Sliding, Tumbling, Window

KEYS = ["a", "b", "c", "d"]


@st.composite
def bids(draw, max_delay: float = 1.0):
    """(key, t) in arrival order, at most `max_delay` out of order."""
    clock, events = 0.0, []
    for _ in range(draw(st.integers(0, 40))):
        clock += draw(st.sampled_from([0.0, 0.125, 0.5, 1.0, 3.0]))
        back = draw(st.integers(0, int(max_delay * 8))) / 8
        events.append((draw(st.sampled_from(KEYS)), clock - back))
    return events


def sliding_windows(size: float, step: float, t: float) -> list[Window]:
    k, out = math.floor(t / step), []
    while k * step + size > t:
        if k * step <= t:
            out.append(Window(k * step, k * step + size))
        k -= 1
    return out


def reference(events, size, step, hot_size) -> dict:
    """Counts per key and sliding window, each at its window's end minus
    the smallest float step, then per count window (its end) and tumbling
    window of `hot_size` over that time: the largest (count, key)."""
    counts: dict = defaultdict(int)
    for key, t in events:
        for w in sliding_windows(size, step, t):
            counts[(key, w)] += 1
    hot: dict = {}
    for (key, w), n in counts.items():
        stamp = math.nextafter(w.end, -math.inf)
        assert w.start <= stamp < w.end
        j = math.floor(stamp / hot_size)  # then by definition (-5e-324 / 2 is -0.0)
        while j * hot_size > stamp:
            j -= 1
        while (j + 1) * hot_size <= stamp:
            j += 1
        group = (w.end, Window(j * hot_size, (j + 1) * hot_size))
        hot[group] = max(hot.get(group, (n, key)), (n, key))
    return hot


def hot_items(flow, events, size, step, hot_size, batch_size):
    source = flow.from_iterable(events, timestamp=lambda e: e[1], max_delay=1.0, batch_size=batch_size)
    counts = source.key_by(lambda e: e[0]).window(Sliding(size, step)).count()
    pairs = counts.key_by(lambda r: r[1].end).map_values(lambda r: (r[2], r[0]))
    hot = pairs.window(Tumbling(hot_size)).reduce(max)
    return counts, hot


@settings(max_examples=12, deadline=None)
@given(bids(), st.sampled_from([(10.0, 2.0), (2.0, 0.5), (1.0, 1.0)]), st.sampled_from([2.0, 0.5]),
       st.sampled_from([1, 4, 100]), st.sampled_from([1, 2, 3]))
def test_window_results_windowed_again_equal_the_reference(events, sliding, hot_size, batch_size, cores):
    flow = Dataflow()
    counts, hot = hot_items(flow, events, *sliding, hot_size, batch_size)
    out = hot.collect()
    run(flow, cores=cores)
    got = {}
    for end, window, best in out.items:
        assert (end, window) not in got
        got[(end, window)] = best
    assert got == reference(events, *sliding, hot_size)
    assert counts.late_count.value == 0 and hot.late_count.value == 0


class Stamps(Operator):
    """Passes records on as (record, its timestamp)."""

    def on_batch(self, port, batch):
        self.emit([(record, stamp) for record, stamp in zip(batch, batch.timestamps)])


@pytest.mark.parametrize("window", [Tumbling(1.0), Sliding(2.0, 1.0), Session(0.5)])
def test_each_result_is_at_its_windows_end_minus_the_smallest_step(window):
    flow = Dataflow()
    events = [("a", 0.25), ("a", 0.5), ("b", 1.5), ("a", 3.0)]
    source = flow.from_iterable(events, timestamp=lambda e: e[1])
    out = source.key_by(lambda e: e[0]).window(window).count().apply(Stamps).collect()
    joined = source.key_by(lambda e: e[0]).join(source.key_by(lambda e: e[0]), window).apply(Stamps).collect()
    run(flow, cores=2)
    for (_key, w, _n), stamp in out.items + joined.items:
        assert stamp == math.nextafter(w.end, -math.inf) == w.max_timestamp
    assert len(out.items) >= 3 and len(joined.items) >= 3


def test_a_window_after_a_keyed_aggregate_names_the_aggregate_when_built():
    flow = Dataflow()
    counts = flow.from_iterable([("a", 1.0)], timestamp=lambda e: e[1]).key_by(lambda e: e[0]).count()
    lost_at_count = r"window\(Tumbling\(2.0\)\).*lost on the way at step count \(step 2\)"
    with pytest.raises(KernelError, match=lost_at_count):
        counts.key_by(lambda r: r[0]).window(Tumbling(2.0))
    late = flow.from_iterable([("a", 1.0)], timestamp=lambda e: e[1]).key_by(lambda e: e[0]).window(
        Tumbling(1.0), late=True).count().late
    with pytest.raises(KernelError, match="late events"):
        late.key_by(lambda r: r[0]).window(Tumbling(2.0))


class Untimed(Operator):
    def on_batch(self, port, batch):
        self.emit(list(batch))  # drops the timestamps


@pytest.mark.parametrize("cores", [1, 2])
def test_a_custom_step_that_drops_event_time_is_named_when_records_flow(cores):
    flow = Dataflow()
    source = flow.from_iterable([("a", 1.0)] * 3, timestamp=lambda e: e[1])
    source.apply(Untimed, name="untimed").key_by(lambda e: e[0]).window(Tumbling(2.0)).count().collect()
    with pytest.raises(KernelError, match=r"carry no timestamps.*may drop them: untimed \(step 1\)"):
        run(flow, cores=cores)


def test_the_results_of_a_window_with_late_true_can_be_windowed_again():
    flow = Dataflow()
    source = flow.from_iterable([("a", 0.5), ("a", 1.5), ("b", 2.5)], timestamp=lambda e: e[1])
    counts = source.key_by(lambda e: e[0]).window(Tumbling(1.0), late=True).count()
    windowed = counts.key_by(lambda r: "all").map_values(lambda r: r[2]).window(Tumbling(2.0))
    assert windowed._time_hint is None  # nothing on the way may drop event time
    out = windowed.sum().collect()
    run(flow)
    assert sorted((w.start, n) for _, w, n in out.items) == [(0.0, 2), (2.0, 1)]
