"""`KeyedStream.join(other)` without a window: every pair with the same key,
as pairs meet, exact against a brute-force reference on 1, 2 and 3
kernels; with `ttl=`, the pairs at most `ttl` apart (an interval join), the
state dropped as the watermark passes, late values counted. The pairs
carry the later of their two times."""

from __future__ import annotations

import logging
import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelError, Operator, OperatorError, TimedBatch, run
from operators import KeyedJoin

KEYS = st.sampled_from(["a", "b", "c", 4])


@st.composite
def timed_sides(draw, max_delay: float = 1.0):
    """Two lists of (key, t, index) in arrival order, at most `max_delay`
    out of order."""
    sides = []
    for side in range(2):
        clock, events = 0.0, []
        for i in range(draw(st.integers(0, 25))):
            clock += draw(st.sampled_from([0.0, 0.125, 0.5, 1.0, 2.0]))
            back = draw(st.integers(0, int(max_delay * 8))) / 8
            events.append((draw(KEYS), clock - back, f"{'lr'[side]}{i}"))
        sides.append(events)
    return sides


def pairs_by_brute_force(left, right, ttl) -> Counter:
    return Counter((kl, (vl, vr)) for kl, tl, vl in left for kr, tr, vr in right
                   if kl == kr and (ttl is None or abs(tl - tr) <= ttl))


class Stamped(Operator):
    """(record, its timestamp) for every record."""

    def on_batch(self, port, batch):
        self.emit([(record, stamp) for record, stamp in zip(batch, batch.timestamps)])


@settings(max_examples=25, deadline=None)
@given(timed_sides(), st.sampled_from([None, 0.0, 0.5, 2.0]), st.sampled_from([1, 3, 100]),
       st.sampled_from([1, 2, 3]))
def test_the_join_equals_the_brute_force_pairs(sides, ttl, batch_size, cores):
    left, right = sides
    flow = Dataflow()

    def keyed(events):
        source = flow.from_iterable(events, timestamp=lambda e: e[1], max_delay=1.0, batch_size=batch_size)
        return source.key_by(lambda e: e[0]).map_values(lambda e: e[2])

    joined = keyed(left).join(keyed(right), ttl=ttl)
    out = joined.apply(Stamped).collect()
    run(flow, cores=cores)
    got = Counter(record for record, _ in out.items)
    assert got == pairs_by_brute_force(left, right, ttl)
    time_of = {v: t for _, t, v in left + right}
    for (_key, (lv, rv)), stamp in out.items:
        assert stamp == max(time_of[lv], time_of[rv])
    assert joined.late_count.value == 0


@settings(max_examples=10, deadline=None)
@given(st.lists(st.tuples(st.booleans(), KEYS), max_size=30), st.sampled_from([1, 2, 3]))
def test_without_event_time_every_pair_joins(records, cores):
    left = [(key, i) for i, (is_left, key) in enumerate(records) if is_left]
    right = [(key, i) for i, (is_left, key) in enumerate(records) if not is_left]
    flow = Dataflow()
    lhs = flow.from_iterable(left, batch_size=2).key_by(lambda r: r[0]).map_values(lambda r: r[1])
    rhs = flow.from_iterable(right, batch_size=2).key_by(lambda r: r[0]).map_values(lambda r: r[1])
    out = lhs.join(rhs).collect()
    run(flow, cores=cores)
    assert Counter(out.items) == Counter((kl, (vl, vr)) for kl, vl in left for kr, vr in right if kl == kr)


# -- the operator itself: expiry, lateness, snapshots ----------------------------------


class Context:
    logger = logging.getLogger("test")


def wired(ttl):
    join = KeyedJoin(ttl)
    join.name, join.context = "join", Context()
    join.out = []
    join.emit = join.out.extend
    join.open(join.context)
    return join


def held(join) -> dict:
    return {side: {k: [v for _, v in entries] for k, entries in values.items()}
            for side, values in zip("lr", join.sides)}


def test_values_expire_once_the_watermark_passes_their_time_plus_ttl():
    join = wired(ttl=2.0)
    join.on_batch(0, TimedBatch([("k", "l1"), ("k", "l2"), ("j", "l3")], [1.0, 3.0, 1.5]))
    join.on_watermark(3.0)  # l1 expires at > 3.0: kept
    assert held(join) == {"l": {"k": ["l1", "l2"], "j": ["l3"]}, "r": {}}
    join.on_watermark(3.75)  # l1 (1 + 2) and l3 (1.5 + 2) gone, l2 (3 + 2) kept
    assert held(join) == {"l": {"k": ["l2"]}, "r": {}}
    join.on_batch(1, TimedBatch([("k", "r1")], [4.5]))
    assert join.out == [("k", ("l2", "r1"))]
    join.on_watermark(math.inf)
    assert held(join) == {"l": {}, "r": {}}


def test_a_value_behind_the_watermark_is_late_and_counted():
    join = wired(ttl=1.0)
    join.on_batch(0, TimedBatch([("k", "l1")], [5.0]))
    join.on_watermark(5.0)
    join.on_batch(1, TimedBatch([("k", "r-late"), ("k", "r-on-time")], [4.5, 5.5]))
    assert join.out == [("k", ("l1", "r-on-time"))]
    assert join.late == 1 and join.result() == {"late": 1}


def test_a_restored_join_pairs_with_what_it_held_and_still_expires_it():
    join = wired(ttl=1.0)
    join.on_batch(0, TimedBatch([("k", "l1"), ("k", "l2")], [1.0, 4.0]))
    snapshot = join.on_epoch(1)
    resumed = wired(ttl=1.0)
    resumed.restore(snapshot)
    resumed.on_watermark(2.5)  # l1 expires: the restored values are in the expiry heap
    assert held(resumed) == {"l": {"k": ["l2"]}, "r": {}}
    resumed.on_batch(1, TimedBatch([("k", "r1")], [4.5]))
    assert resumed.out == [("k", ("l2", "r1"))]


# -- errors ------------------------------------------------------------------------------


def test_an_unhashable_key_is_named():
    flow = Dataflow()
    lhs = flow.from_iterable([[1]]).key_by(lambda r: r)
    rhs = flow.from_iterable([[2]]).key_by(lambda r: r)
    lhs.join(rhs, name="pairs").collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.operator == "pairs (step 4)"
    assert "hash(key)" in str(info.value) and "([1], [1])" in str(info.value)


def test_arguments_are_checked_when_the_flow_is_built():
    flow = Dataflow()
    timed = flow.from_iterable([("a", 1.0)], timestamp=lambda e: e[1]).key_by(lambda e: e[0])
    untimed = flow.from_iterable([("a", 1.0)]).key_by(lambda e: e[0])
    lost_at_source = r"join ttl=1.0: a join with ttl= needs event time.*from_iterable#2 \(step 2\), a source"
    with pytest.raises(KernelError, match=lost_at_source):
        timed.join(untimed, ttl=1.0)
    for ttl in (-1, math.inf, math.nan, "1", True):
        with pytest.raises(ValueError, match="ttl must be a finite number"):
            timed.join(timed, ttl=ttl)
    with pytest.raises(ValueError, match="late= is for a windowed join"):
        timed.join(timed, late=True)
