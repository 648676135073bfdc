"""Record-at-a-time operators against plain-Python references.

Every property runs a whole flow per example on hypothesis inputs: mixed
records, empty inputs, and batch sizes from 1 to far larger than the input.
"""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KeyedStream, run

EXAMPLES = settings(max_examples=40, deadline=None)

ints = st.lists(st.integers(-1000, 1000), max_size=60)
words = st.lists(st.text(alphabet="abcXYZ é", max_size=8), max_size=40)
records = st.lists(st.one_of(st.integers(-50, 50), st.text(alphabet="ab c", max_size=4)), max_size=50)
# 1, small, and far larger than any input (one batch, partly filled).
batch_sizes = st.one_of(st.just(1), st.integers(1, 12), st.integers(60, 5000))


def run_collect(data, batch_size, build):
    """Run `build(source_stream)` on `data` and return what reached collect()."""
    flow = Dataflow("test")
    out = build(flow.from_iterable(data, batch_size=batch_size)).collect()
    run(flow)
    return out.items


def tagged(x):
    return (type(x).__name__, x, repr(x))


@EXAMPLES
@given(records, batch_sizes)
def test_map_equals_list_comprehension(data, batch_size):
    assert run_collect(data, batch_size, lambda s: s.map(tagged)) == [tagged(x) for x in data]


@EXAMPLES
@given(ints, batch_sizes)
def test_filter_equals_builtin_filter(data, batch_size):
    def keep(x):
        return x % 3 == 0

    assert run_collect(data, batch_size, lambda s: s.filter(keep)) == [x for x in data if keep(x)]


@EXAMPLES
@given(words, batch_sizes)
def test_filter_on_strings_uses_truthiness(data, batch_size):
    # `str.strip` returns a str: records whose stripped form is empty are dropped.
    assert run_collect(data, batch_size, lambda s: s.filter(str.strip)) == [w for w in data if w.strip()]


@EXAMPLES
@given(ints, batch_sizes)
def test_flat_map_equals_nested_comprehension(data, batch_size):
    def repeat(x):
        return [x] * (x % 4)

    out = run_collect(data, batch_size, lambda s: s.flat_map(repeat))
    assert out == [y for x in data for y in repeat(x)]


@EXAMPLES
@given(words, batch_sizes)
def test_flat_map_accepts_any_iterable(data, batch_size):
    def chars(w):
        return (c.upper() for c in w)  # a generator, not a list

    out = run_collect(data, batch_size, lambda s: s.flat_map(chars))
    assert out == [c.upper() for w in data for c in w]


@EXAMPLES
@given(records, batch_sizes)
def test_inspect_sees_every_record_and_passes_them_unchanged(data, batch_size):
    seen = []
    out = run_collect(data, batch_size, lambda s: s.inspect(seen.append))
    assert seen == data
    assert out == data
    assert all(a is b for a, b in zip(out, data, strict=True))


@EXAMPLES
@given(records, batch_sizes)
def test_key_by_makes_key_record_pairs(data, batch_size):
    out = run_collect(data, batch_size, lambda s: s.key_by(repr))
    assert out == [(repr(x), x) for x in data]


def test_key_by_returns_a_keyed_stream_and_map_keeps_it_plain():
    flow = Dataflow()
    keyed = flow.from_iterable([1]).key_by(str)
    assert isinstance(keyed, KeyedStream)
    assert isinstance(keyed.map_values(str), KeyedStream)
    assert not isinstance(keyed.map(str), KeyedStream)


@EXAMPLES
@given(ints, batch_sizes)
def test_map_values_changes_only_the_value(data, batch_size):
    out = run_collect(data, batch_size, lambda s: s.key_by(lambda x: x % 5).map_values(lambda v: v * 2))
    assert out == [(x % 5, x * 2) for x in data]


@EXAMPLES
@given(
    st.lists(ints, min_size=1, max_size=4),
    st.lists(batch_sizes, min_size=4, max_size=4),
)
def test_union_is_the_multiset_sum_and_keeps_each_inputs_order(inputs, sizes):
    flow = Dataflow()
    streams = [
        flow.from_iterable([(i, n, x) for n, x in enumerate(data)], batch_size=size)
        for i, (data, size) in enumerate(zip(inputs, sizes))
    ]
    out = streams[0].union(*streams[1:]).collect()
    run(flow)
    expected = [(i, n, x) for i, data in enumerate(inputs) for n, x in enumerate(data)]
    assert Counter(out.items) == Counter(expected)
    assert len(out.items) == len(expected)
    for i, data in enumerate(inputs):
        assert [rec for rec in out.items if rec[0] == i] == [(i, n, x) for n, x in enumerate(data)]


def test_union_of_a_stream_with_itself_delivers_every_record_twice():
    flow = Dataflow()
    s = flow.from_iterable(range(10), batch_size=3)
    out = s.union(s).collect()
    run(flow)
    assert Counter(out.items) == Counter(list(range(10)) * 2)


def test_union_after_transforms_of_one_source():
    flow = Dataflow()
    s = flow.from_iterable(range(20), batch_size=4)
    evens = s.filter(lambda x: x % 2 == 0).map(lambda x: ("even", x))
    negs = s.map(lambda x: ("neg", -x))
    out = evens.union(negs).collect()
    run(flow)
    assert len(out.items) == 30
    assert [r for r in out.items if r[0] == "even"] == [("even", x) for x in range(0, 20, 2)]
    assert [r for r in out.items if r[0] == "neg"] == [("neg", -x) for x in range(20)]


@EXAMPLES
@given(ints, batch_sizes)
def test_fan_out_gives_each_branch_the_whole_stream(data, batch_size):
    flow = Dataflow()
    s = flow.from_iterable(data, batch_size=batch_size)
    doubled = s.map(lambda x: 2 * x).collect()
    odd = s.filter(lambda x: x % 2).collect()
    plain = s.collect()
    run(flow)
    assert doubled.items == [2 * x for x in data]
    assert odd.items == [x for x in data if x % 2]
    assert plain.items == data


@EXAMPLES
@given(words, batch_sizes)
def test_chain_flat_map_key_by_count_equals_counter(data, batch_size):
    lines = [" ".join(data[i : i + 3]) for i in range(0, len(data), 3)]
    out = run_collect(lines, batch_size, lambda s: s.flat_map(str.split).key_by(str.lower).count())
    expected = Counter(w.lower() for line in lines for w in line.split())
    assert out == list(expected.items())  # Counter keeps first-seen order too


@EXAMPLES
@given(ints, batch_sizes)
def test_long_chain_equals_composed_reference(data, batch_size):
    out = run_collect(
        data,
        batch_size,
        lambda s: s.map(lambda x: x + 1).filter(lambda x: x % 2 == 0).flat_map(lambda x: (x, -x)).map(abs),
    )
    assert out == [abs(y) for x in data if (x + 1) % 2 == 0 for y in (x + 1, -(x + 1))]


def test_a_flow_runs_again_with_fresh_results():
    flow = Dataflow()
    out = flow.from_iterable(range(5), batch_size=2).map(lambda x: x * 10).collect()
    run(flow)
    run(flow)
    assert out.items == [0, 10, 20, 30, 40]


def test_step_names_are_unique_and_say_what_they_do():
    flow = Dataflow()

    def parse(x):
        return x

    s = flow.from_iterable([1]).map(parse).map(parse)
    assert s.node.label == "map(parse)#2 (step 2)"
    assert repr(flow) == "<Dataflow 'flow': 3 steps>"
