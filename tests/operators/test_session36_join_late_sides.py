"""Session 36: a windowed join's late events say which side they came from.

`left.join(right, w, late=True).late` gives `(key, value)` from either
side, and nothing told a left value from a right one (the join's values
may well be of one type). `.late_left` and `.late_right` are each side's;
`.late` stays as it was."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, run
from operators import Tumbling, Window


def _join(left_events, right_events, cores):
    flow = Dataflow("late-sides")

    def side(events, tag):
        timed = flow.from_iterable(events, timestamp=lambda e: e[1], batch_size=1)
        return timed.key_by(lambda e: e[0]).map_values(lambda e: (tag, e[2]))

    joined = side(left_events, "L").join(side(right_events, "R"), Tumbling(1.0), late=True)
    handles = [joined.collect(), joined.late.collect(), joined.late_left.collect(),
               joined.late_right.collect()]
    run(flow, cores=cores)
    return joined, [handle.items for handle in handles]


def test_each_side_gets_its_own_late_values():
    # each side's first event moves its watermark to 5: its second (at 0.5) is late
    joined, (pairs, late, left, right) = _join([("a", 5.0, 1), ("a", 0.5, 2)],
                                               [("a", 5.0, 3), ("a", 0.5, 4)], cores=1)
    assert pairs == [("a", joined_window(5.0), (("L", 1), ("R", 3)))]
    assert left == [("a", ("L", 2))]
    assert right == [("a", ("R", 4))]
    assert Counter(late) == Counter(left + right)
    assert joined.late_count.value == 2


def joined_window(start):
    return Window(start, start + 1.0)


events = st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 8).map(float), st.integers(0, 99)),
                  max_size=12)


@settings(max_examples=15, deadline=None)
@given(events, events)
def test_the_sides_split_late_exactly(left_events, right_events):
    """Whatever is late (it differs from kernel count to kernel count), the
    two sides' streams hold exactly `.late`'s events, each on its side."""
    for cores in (1, 2, 3):
        joined, (_, late, left, right) = _join(left_events, right_events, cores)
        assert all(value[0] == "L" for _, value in left)
        assert all(value[0] == "R" for _, value in right)
        assert Counter(late) == Counter(left + right)
        assert len(late) == joined.late_count.value


def test_only_a_windowed_join_with_late_has_sides():
    flow = Dataflow("no-sides")
    keyed = flow.from_iterable([("a", 1.0)], timestamp=lambda e: e[1]).key_by(lambda e: e[0])
    with pytest.raises(AttributeError, match="late_left is a windowed join's"):
        _ = keyed.window(Tumbling(1.0), late=True).count().late_left
    with pytest.raises(AttributeError, match="late events are dropped"):
        _ = keyed.join(keyed, Tumbling(1.0)).late_right


def test_a_side_stream_carries_no_event_time():
    # as `.late`: a window over it is refused when the flow is built
    flow = Dataflow("untimed")
    keyed = flow.from_iterable([("a", 1.0)], timestamp=lambda e: e[1]).key_by(lambda e: e[0])
    joined = keyed.join(keyed.map_values(lambda v: v), Tumbling(1.0), late=True)
    with pytest.raises(Exception, match="event time"):
        joined.late_left.key_by(lambda kv: kv[0]).window(Tumbling(1.0)).count()
