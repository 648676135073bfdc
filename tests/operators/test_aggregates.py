"""Keyed aggregates against dict-based references.

Every aggregate emits one `(key, result)` per key when the input ends, keys in
first-seen order, values folded in arrival order (so order-sensitive
functions are checked too).
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, run

EXAMPLES = settings(max_examples=40, deadline=None)

# (key, value) pairs with few distinct keys, so keys repeat across batches.
int_pairs = st.lists(st.tuples(st.sampled_from("abcde"), st.integers(-100, 100)), max_size=60)
str_pairs = st.lists(
    st.tuples(st.one_of(st.integers(0, 3), st.sampled_from(["x", "y"])), st.text(alphabet="pqr", max_size=3)),
    max_size=60,
)
batch_sizes = st.one_of(st.just(1), st.integers(1, 12), st.integers(60, 5000))


def aggregate(pairs, batch_size, build):
    """Key the pairs by their first item, keep the second as value, run
    `build(keyed)` and return what it emitted."""
    flow = Dataflow("agg")
    keyed = flow.from_iterable(pairs, batch_size=batch_size).key_by(lambda p: p[0]).map_values(lambda p: p[1])
    out = build(keyed).collect()
    run(flow)
    return out.items


def ref_fold(pairs, init, fn):
    acc: dict = {}
    for key, value in pairs:
        acc[key] = fn(acc[key] if key in acc else init(), value)
    return list(acc.items())


def ref_reduce(pairs, fn):
    acc: dict = {}
    for key, value in pairs:
        acc[key] = fn(acc[key], value) if key in acc else value
    return list(acc.items())


@EXAMPLES
@given(int_pairs, batch_sizes)
def test_count_equals_dict_count(pairs, batch_size):
    expected: dict = {}
    for key, _ in pairs:
        expected[key] = expected.get(key, 0) + 1
    assert aggregate(pairs, batch_size, lambda k: k.count()) == list(expected.items())


@EXAMPLES
@given(int_pairs, batch_sizes)
def test_sum_of_ints(pairs, batch_size):
    assert aggregate(pairs, batch_size, lambda k: k.sum()) == ref_reduce(pairs, lambda a, b: a + b)


@EXAMPLES
@given(str_pairs, batch_sizes)
def test_sum_of_strings_concatenates_in_arrival_order(pairs, batch_size):
    # Sum starts from the first value, so it works for any type with `+`.
    assert aggregate(pairs, batch_size, lambda k: k.sum()) == ref_reduce(pairs, lambda a, b: a + b)


@EXAMPLES
@given(int_pairs, batch_sizes)
def test_reduce_with_max(pairs, batch_size):
    assert aggregate(pairs, batch_size, lambda k: k.reduce(max)) == ref_reduce(pairs, max)


@EXAMPLES
@given(str_pairs, batch_sizes)
def test_reduce_with_an_order_sensitive_function(pairs, batch_size):
    def join(acc, value):
        return f"({acc}|{value})"

    assert aggregate(pairs, batch_size, lambda k: k.reduce(join)) == ref_reduce(pairs, join)


@EXAMPLES
@given(int_pairs, batch_sizes)
def test_fold_with_an_immutable_start_value(pairs, batch_size):
    def horner(acc, value):
        return acc * 7 + value

    out = aggregate(pairs, batch_size, lambda k: k.fold(3, horner))
    assert out == ref_fold(pairs, lambda: 3, horner)


@EXAMPLES
@given(str_pairs, batch_sizes)
def test_fold_with_a_tuple_start_value(pairs, batch_size):
    def append(acc, value):
        return (*acc, value)

    out = aggregate(pairs, batch_size, lambda k: k.fold((), append))
    assert out == ref_fold(pairs, tuple, append)


@EXAMPLES
@given(int_pairs, batch_sizes)
def test_fold_with_a_factory_gives_every_key_its_own_accumulator(pairs, batch_size):
    def append(acc, value):
        acc.append(value)  # mutates: a shared start list would mix the keys
        return acc

    out = aggregate(pairs, batch_size, lambda k: k.fold(list, append))
    assert out == ref_fold(pairs, list, append)
    accumulators = [acc for _, acc in out]
    assert len({id(acc) for acc in accumulators}) == len(accumulators)


@EXAMPLES
@given(int_pairs, batch_sizes)
def test_fold_from_a_list_value_gives_every_key_its_own_copy(pairs, batch_size):
    def append(acc, value):
        acc.append(value)  # mutates: the start list shared by every key mixed them all
        return acc

    start: list = []
    out = aggregate(pairs, batch_size, lambda k: k.fold(start, append))
    assert out == ref_fold(pairs, list, append)
    assert start == []


def test_fold_from_a_sentinel_or_an_uncopyable_value_hands_out_the_value_itself():
    # a bare object() is a sentinel told apart with `is`, and a value that
    # cannot be deep-copied (it holds a lock) was shared before copies were
    # made: both broke at each key's first record once every start value was copied
    import threading

    pairs = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
    start = object()

    def add(acc, value):
        return value if acc is start else acc + value

    assert aggregate(pairs, 2, lambda k: k.fold(start, add)) == [("a", 4), ("b", 7), ("c", 4)]

    class Limits:  # fn reads it and never changes it
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.base = 100

    limits = Limits()

    def total(acc, value):
        return (acc.base if acc is limits else acc) + value

    assert aggregate(pairs, 2, lambda k: k.fold(limits, total)) == [("a", 104), ("b", 107), ("c", 104)]


def test_fold_with_dict_factory():
    pairs = [("a", "x"), ("b", "y"), ("a", "y"), ("a", "x")]

    def tally(acc, value):
        acc[value] = acc.get(value, 0) + 1
        return acc

    assert aggregate(pairs, 2, lambda k: k.fold(dict, tally)) == [("a", {"x": 2, "y": 1}), ("b", {"y": 1})]


@EXAMPLES
@given(int_pairs, batch_sizes)
def test_map_values_then_count_and_sum_branches(pairs, batch_size):
    flow = Dataflow()
    keyed = flow.from_iterable(pairs, batch_size=batch_size).key_by(lambda p: p[0])
    values = keyed.map_values(lambda p: p[1])
    counts = values.count().collect()
    sums = values.sum().collect()
    run(flow)
    assert dict(counts.items) == {k: sum(1 for q, _ in pairs if q == k) for k, _ in pairs}
    assert sums.items == ref_reduce(pairs, lambda a, b: a + b)


@EXAMPLES
@given(st.lists(st.integers(0, 10_000), max_size=3000), st.sampled_from([1, 7, 1024, 5000]))
def test_many_keys_emitted_in_first_seen_order(data, batch_size):
    # More keys than one output batch holds (1024): order must hold across them.
    flow = Dataflow()
    out = flow.from_iterable(data, batch_size=batch_size).key_by(lambda x: x).count().collect()
    run(flow)
    assert [k for k, _ in out.items] == list(dict.fromkeys(data))
    assert sum(n for _, n in out.items) == len(data)


@settings(max_examples=15, deadline=None)
@given(int_pairs, batch_sizes)
def test_aggregates_emit_only_after_the_last_record(pairs, batch_size):
    trace = []
    flow = Dataflow()
    keyed = flow.from_iterable(pairs, batch_size=batch_size).inspect(lambda p: trace.append("in"))
    keyed = keyed.key_by(lambda p: p[0]).map_values(lambda p: p[1])
    keyed.count().inspect(lambda r: trace.append("count")).collect()
    keyed.sum().inspect(lambda r: trace.append("sum")).collect()
    run(flow)
    keys = len({k for k, _ in pairs})
    assert trace[: len(pairs)] == ["in"] * len(pairs)
    assert sorted(trace[len(pairs) :]) == sorted(["count"] * keys + ["sum"] * keys)


def test_aggregates_of_an_empty_input_emit_nothing():
    flow = Dataflow()
    keyed = flow.from_iterable([]).key_by(lambda x: x)
    outs = [
        keyed.count().collect(),
        keyed.sum().collect(),
        keyed.reduce(max).collect(),
        keyed.fold(0, max).collect(),
    ]
    run(flow)
    assert [o.items for o in outs] == [[], [], [], []]


def test_aggregates_accept_any_hashable_key():
    pairs = [((1, 2), 1.5), (None, 2.0), (frozenset({1}), 0.5), ((1, 2), 0.25), (math.inf, 1.0)]
    assert aggregate(pairs, 2, lambda k: k.sum()) == [
        ((1, 2), 1.75),
        (None, 2.0),
        (frozenset({1}), 0.5),
        (math.inf, 1.0),
    ]
