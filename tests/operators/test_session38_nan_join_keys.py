"""Session 38: a join key that holds a float NaN matches nothing, on any
number of kernels (SQL's NULL keys).

A dict finds a key by identity before it compares, so one NaN object met on
both sides of a join (or a tuple holding it) paired on one kernel, and on
several only where both values stayed on the kernel that read them: the
result depended on the kernel count. Checked against a plain loop, for a
join as pairs meet, one with `ttl=` and a windowed one."""

import math
from collections import Counter

from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernel import Dataflow, run
from operators import Session, Tumbling, Window

NAN = math.nan
NAN_PAIR = (1, NAN)  # one object on both sides: it paired on one kernel
TTL = 1.0


def _is_nan_key(key) -> bool:
    if isinstance(key, float):
        return math.isnan(key)
    return isinstance(key, tuple) and any(map(_is_nan_key, key))


def _reference(lefts, rights):
    """The three joins' results by a plain loop: no NaN key matches."""
    pairs = [(lk, (lv, rv), lt, rt) for lk, lt, lv in lefts for rk, rt, rv in rights
             if lk == rk and not _is_nan_key(lk)]
    return (Counter((key, pair) for key, pair, _, _ in pairs),
            Counter((key, pair) for key, pair, lt, rt in pairs if abs(lt - rt) <= TTL),
            Counter((key, Window(math.floor(lt), math.floor(lt) + 1.0), pair)
                    for key, pair, lt, rt in pairs if math.floor(lt) == math.floor(rt)))


def _joins(lefts, rights, cores):
    flow = Dataflow("nan-keys")

    def side(events):  # in time order: nothing is late, so every join's result is exact
        timed = flow.from_iterable(sorted(events, key=lambda e: e[1]), timestamp=lambda e: e[1],
                                   batch_size=2)
        return timed.key_by(lambda e: e[0]).map_values(lambda e: e[2])

    left, right = side(lefts), side(rights)
    handles = [left.join(right).collect(), left.join(right, ttl=TTL).collect(),
               left.join(right, Tumbling(1.0)).collect()]
    run(flow, cores=cores)
    return tuple(Counter(handle.items) for handle in handles)


def test_one_nan_object_on_both_sides_pairs_nowhere():
    lefts = [(NAN, 0.1, "l-nan"), (NAN_PAIR, 0.2, "l-pair"), ("a", 0.3, "l-a")]
    rights = [(NAN, 0.4, "r-nan"), (NAN_PAIR, 0.5, "r-pair"), ("a", 0.6, "r-a")]
    plain, within_ttl, windowed = _joins(lefts, rights, cores=1)
    assert plain == within_ttl == Counter([("a", ("l-a", "r-a"))])
    assert windowed == Counter([("a", Window(0.0, 1.0), ("l-a", "r-a"))])

    flow = Dataflow("nan-sessions")  # a session's pairs are made apart from windows by number
    left, right = (flow.from_iterable(events, timestamp=lambda e: e[1]).key_by(lambda e: e[0])
                   .map_values(lambda e: e[2]) for events in (lefts, rights))
    sessions = left.join(right, Session(1.0)).collect()
    run(flow)
    assert [(key, pair) for key, _, pair in sessions.items] == [("a", ("l-a", "r-a"))]


keys = st.one_of(st.sampled_from([NAN, NAN_PAIR, 1.0, "a", (2, "b")]),
                 st.builds(float, st.just("nan")), st.builds(lambda: (1, float("nan"))))
events = st.lists(st.tuples(keys, st.integers(0, 30).map(lambda t: t / 10), st.integers(0, 99)),
                  max_size=10)


@settings(max_examples=8, deadline=None)
@given(events, events)
@example([(NAN, 0.1, 1), (NAN_PAIR, 2.5, 2)], [(NAN, 0.2, 3), (NAN_PAIR, 2.6, 4)])  # the shared objects
def test_nan_keys_match_nothing_on_1_2_and_3_kernels(lefts, rights):
    expected = _reference(lefts, rights)
    for cores in (1, 2, 3):
        assert _joins(lefts, rights, cores) == expected, f"on {cores} kernels"
