"""Adversarial review of event time: windows, sessions, joins and
watermarks held to the README and to brute-force references. Each test
asserts the documented behaviour and fails on the code it was written
against (see the commit message)."""

from __future__ import annotations

from collections import Counter

from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_join_unwindowed import pairs_by_brute_force, wired

from kernel import Dataflow, TimedBatch, VirtualClock, run

# -- interval join (join(other, ttl=...)): expiry against the pair rule ------------------


def interval_join(events, ttl, cores=1, max_delay=0.0):
    """One timed source of ("L" or "R", key, t, value) events, batches of
    one, split into a left and a right keyed stream and joined with `ttl`:
    the pairs, and the late count."""
    flow = Dataflow()
    src = flow.from_iterable(events, timestamp=lambda e: e[2], max_delay=max_delay, batch_size=1)

    def side(name):
        return src.filter(lambda e: e[0] == name).key_by(lambda e: e[1]).map_values(lambda e: e[3])

    joined = side("L").join(side("R"), ttl=ttl)
    out = joined.collect()
    run(flow, cores=cores, clock=VirtualClock())
    return Counter(out.items), joined.late_count.value


def reference_pairs(events, ttl) -> Counter:
    left = [(k, t, v) for s, k, t, v in events if s == "L"]
    right = [(k, t, v) for s, k, t, v in events if s == "R"]
    return pairs_by_brute_force(left, right, ttl)


def test_an_interval_join_keeps_a_value_for_a_partner_exactly_ttl_later():
    """README: `join(other, ttl=0.7)` emits the pairs "at most ttl apart";
    _join.py: "the result never depends on when watermarks came". Left
    l@0.2 and right r@0.9 are 0.7 apart (0.9 - 0.2 == 0.7 in floats too), so
    they pair, and they do with a large max_delay. But with max_delay=0 the
    watermark reaches 0.9 (another key's events) before r comes, and the
    join drops l, keeping it only while `0.2 + 0.7 >= watermark`, and
    0.2 + 0.7 is 0.8999999999999999 in floats: the pair is lost, and r
    is not late (0.9 >= the watermark), so nothing is counted either."""
    events = [("L", "k", 0.2, "l"), ("L", "x", 0.9, "lx"), ("R", "x", 0.9, "rx"), ("R", "k", 0.9, "r")]
    assert 0.9 - 0.2 <= 0.7 and 0.2 + 0.7 < 0.9  # the pair's rule says yes; the sum rounds down
    expected = Counter({("k", ("l", "r")): 1, ("x", ("lx", "rx")): 1})
    assert reference_pairs(events, 0.7) == expected
    assert interval_join(events, 0.7, max_delay=5.0) == (expected, 0)  # no expiry in the way
    assert interval_join(events, 0.7, max_delay=0.0) == (expected, 0)


def test_an_expired_value_is_one_no_value_on_time_can_pair_with_any_more():
    """The operator alone: a value is to be dropped once "no value on time
    can pair with it any more" (_join.py). After watermark 0.9, a value at
    0.9 is on time and pairs with one at 0.2 under ttl=0.7, so the value at
    0.2 must still be held."""
    join = wired(ttl=0.7)
    join.on_batch(0, TimedBatch([("k", "l")], [0.2]))
    join.on_watermark(0.9)
    join.on_batch(1, TimedBatch([("k", "r")], [0.9]))
    assert join.out == [("k", ("l", "r"))]
    assert join.late == 0


TENTHS = st.integers(0, 40).map(lambda n: n / 10)


@st.composite
def sorted_sides(draw):
    """("L"/"R", key, t, value) events in time order (none is late with
    max_delay=0), times on a grid of tenths, where float sums round."""
    times = sorted(draw(st.lists(TENTHS, min_size=1, max_size=14)))
    return [(draw(st.sampled_from("LR")), draw(st.sampled_from("ab")), t, f"v{i}")
            for i, t in enumerate(times)]


@settings(max_examples=20, deadline=None)
@given(sorted_sides(), st.sampled_from([0.1, 0.3, 0.7, 1.1]), st.sampled_from([1, 2, 3]))
@example([("L", "a", 0.2, "v0"), ("R", "b", 0.9, "v1"), ("R", "a", 0.9, "v2")], 0.7, 1)
def test_an_interval_join_of_events_in_time_order_equals_the_nested_loop(events, ttl, cores):
    """Events in time order are never late (max_delay=0, each kernel's
    share in order too), so every pair at most `ttl` apart must come out,
    whatever the watermarks did meanwhile."""
    assert interval_join(events, ttl, cores) == (reference_pairs(events, ttl), 0)
