"""Session 34's review of event time: the cost of a hot key in an interval
join and in session windows (exact against a brute-force reference), and
what a late event leaves in a window's state."""

from __future__ import annotations

import math
import resource
import time
from collections import Counter

import pytest

from kernel import Dataflow, TimedBatch, run
from operators import CountAggregation, Session, Tumbling, WindowAggregate

# A hot key: one value every 10 ms, so a ttl of 50 s holds ~5,000 of its
# values at any time. CPU time of the run, one kernel in this process: ~0.2 s.
HOT_EVENTS, SPACING = 30_000, 0.01
CPU_LIMIT = 3.0


def test_an_interval_join_on_a_hot_key_expires_its_values_in_linear_time():
    # Each expiring value read its key's whole list of values: with 5,000
    # held, 30,000 values on the left and a few on the right took ~10 s of CPU.
    ttl = 50.0
    left = [("hot", i * SPACING, f"l{i}") for i in range(HOT_EVENTS)]
    right = [("hot", t, f"r{t}") for t in (0.0, 100.0, 250.005, 299.99)]
    flow = Dataflow("hot-interval-join")
    lhs = flow.from_iterable(left, timestamp=lambda e: e[1]).key_by(lambda e: e[0]).map_values(lambda e: e[2])
    rhs = flow.from_iterable(right, timestamp=lambda e: e[1], max_delay=300.0).key_by(
        lambda e: e[0]).map_values(lambda e: e[2])
    pairs = lhs.join(rhs, ttl=ttl)
    out = pairs.collect()
    started = time.process_time()
    run(flow)
    spent = time.process_time() - started
    expected = Counter((kl, (vl, vr)) for kl, tl, vl in left for kr, tr, vr in right
                       if kl == kr and abs(tl - tr) <= ttl)
    assert Counter(out.items) == expected
    assert pairs.late_count.value == 0
    assert spent < CPU_LIMIT, f"{spent:.1f} s of CPU"


def test_session_windows_with_many_open_on_a_hot_key_take_linear_time():
    # max_delay far past the gap keeps every session open until the end: each
    # event read every open session of its key (and sorted them), ~10 s of CPU
    events = [("hot", float(i), i) for i in range(HOT_EVENTS)]
    events[100], events[101] = events[101], events[100]  # (out of order: placed between two)
    events.append(("hot", 500.5, -1))  # bridges two sessions: merged
    flow = Dataflow("hot-sessions")
    stream = flow.from_iterable(events, timestamp=lambda e: e[1], max_delay=HOT_EVENTS)
    sessions = stream.key_by(lambda e: e[0]).map_values(lambda e: e[2]).window(Session(0.75)).collect()
    out = sessions.collect()
    started = time.process_time()
    run(flow)
    spent = time.process_time() - started
    expected = [("hot", (float(i), i + 0.75), [i]) for i in range(HOT_EVENTS) if i not in (500, 501)]
    expected.append(("hot", (500.0, 501.75), [500, -1, 501]))
    assert sorted(out.items) == sorted(expected)
    assert sessions.late_count.value == 0
    assert spent < CPU_LIMIT, f"{spent:.1f} s of CPU"


@pytest.mark.parametrize("window", [Session(1.0), Tumbling(1.0)], ids=repr)
def test_a_late_event_of_a_key_without_windows_leaves_nothing_in_the_state(window):
    # A session window kept an empty list of sessions for the key of every
    # late event that opened none: a key a late event, in the state (and
    # every snapshot) for good
    aggregate = WindowAggregate(window, CountAggregation())
    aggregate.open(None)
    emitted = []
    aggregate.emit = emitted.extend
    aggregate.on_batch(0, TimedBatch([("a", "x")], [100.0]))
    aggregate.on_watermark(100.0)
    aggregate.on_batch(0, TimedBatch([(f"late{i}", "x") for i in range(50)], [1.0] * 50))
    assert aggregate.late == 50
    state = next(iter(aggregate.on_epoch(1)["states"].values()))
    assert [key for keyed in ([state] if isinstance(window, Session) else state.values())
            for key in keyed] == ["a"]
    aggregate.on_watermark(math.inf)
    assert [(key, n) for key, _, n in emitted] == [("a", 1)]


def test_a_snapshot_holding_empty_session_lists_restores_without_them():
    # (what a late event left in the state before: a snapshot of then)
    aggregate = WindowAggregate(Session(1.0), CountAggregation())
    aggregate.open(None)
    aggregate.emit = [].extend
    aggregate.on_batch(0, TimedBatch([("a", "x")], [100.0]))
    snapshot = aggregate.on_epoch(1)
    snapshot["states"]["sessions"].update({f"late{i}": [] for i in range(3)})
    resumed = WindowAggregate(Session(1.0), CountAggregation())
    resumed.open(None)
    emitted = []
    resumed.emit = emitted.extend
    resumed.restore(snapshot)
    assert list(resumed.on_epoch(2)["states"]["sessions"]) == ["a"]
    resumed.on_batch(0, TimedBatch([("late0", "y")], [100.5]))
    resumed.on_watermark(math.inf)
    assert sorted((key, n) for key, _, n in emitted) == [("a", 1), ("late0", 1)]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # (the kernel processes, once joined)
    return usage.ru_utime + usage.ru_stime


def test_a_windowed_count_with_many_windows_open_on_two_kernels_takes_linear_time():
    # The partial half before the exchange counted every open window's
    # accumulators twice a batch: 60,000 windows held open (max_delay past
    # them all) took 10-22 s of the kernels' CPU (one kernel: 0.3 s), and
    # more as the slowed kernels read smaller batches.
    events = 60_000
    flow = Dataflow("many-open-windows")
    stream = flow.from_iterable(range(events), timestamp=lambda i: i * 0.01, max_delay=1e9)
    counts = stream.key_by(lambda i: i % 3).window(Tumbling(0.01)).count()
    out = counts.collect()
    started = _children_cpu()
    run(flow, cores=2)
    spent = _children_cpu() - started
    assert sorted((key, round(window.start / 0.01), n) for key, window, n in out.items) == [
        (i % 3, i, 1) for i in sorted(range(events), key=lambda i: (i % 3, i))]
    assert counts.late_count.value == 0
    assert spent < 2 * CPU_LIMIT, f"{spent:.1f} s of the kernels' CPU"
