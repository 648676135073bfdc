"""The operators on several kernels (`run(flow, cores=N)`): exchange by key
against a dict, each kernel's share of a bounded source, failures from a
kernel process."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelError, Operator, OperatorError, run, run_async

EXAMPLES = settings(max_examples=12, deadline=None)

pairs = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e", 1, 2, (3, 4)]), st.integers(-50, 50)),
                 max_size=80)
batch_sizes = st.one_of(st.just(1), st.integers(1, 12), st.integers(100, 2000))
cores = st.sampled_from([2, 3])


def keyed(flow, data, batch_size):
    return flow.from_iterable(data, batch_size=batch_size).key_by(lambda p: p[0]).map_values(lambda p: p[1])


@EXAMPLES
@given(pairs, batch_sizes, cores)
def test_exchange_brings_every_key_to_one_kernel(data, batch_size, n):
    flow = Dataflow()
    values = keyed(flow, data, batch_size)
    counts = values.count().collect()
    sums = values.sum().collect()
    maxima = values.reduce(max).collect()
    lists = values.fold(list, lambda acc, v: [*acc, v]).collect()
    run(flow, cores=n)
    expected: dict = {}
    for key, value in data:
        expected.setdefault(key, []).append(value)
    # One result per key (all its records met on one kernel), exact values.
    assert len(counts.items) == len(sums.items) == len(maxima.items) == len(lists.items) == len(expected)
    assert dict(counts.items) == {k: len(v) for k, v in expected.items()}
    assert dict(sums.items) == {k: sum(v) for k, v in expected.items()}
    assert dict(maxima.items) == {k: max(v) for k, v in expected.items()}
    # Values of one key arrive from several kernels: their interleaving is free.
    assert {k: sorted(v) for k, v in lists.items} == {k: sorted(v) for k, v in expected.items()}


@EXAMPLES
@given(st.lists(st.integers(-100, 100), max_size=80), batch_sizes, cores)
def test_each_kernel_keeps_its_share_in_order(data, batch_size, n):
    flow = Dataflow()
    out = (flow.from_iterable(data, batch_size=batch_size)
           .map(lambda x: x * 3).filter(lambda x: x % 2 == 0).collect())
    run(flow, cores=n)
    # Record i belongs to kernel i % n; collect gathers kernel 0's first.
    assert out.items == [x * 3 for k in range(n) for x in data[k::n] if (x * 3) % 2 == 0]


def test_word_count_on_two_cores_equals_counter():
    lines = ["the cat sat", "on the mat", "The End", "the"] * 50
    flow = Dataflow()
    out = flow.from_iterable(lines, batch_size=7).flat_map(str.split).key_by(str.lower).count().collect()
    run(flow, cores=2)
    expected = Counter(w.lower() for line in lines for w in line.split())
    assert len(out.items) == len(expected)
    assert dict(out.items) == expected


class WhereAmI(Operator):
    def on_batch(self, port, batch):
        self.emit([(self.context.index, self.context.peers, record) for record in batch])


def test_operators_see_their_kernel_index():
    flow = Dataflow()
    out = flow.from_iterable(range(9), batch_size=2).apply(WhereAmI).collect()
    run(flow, cores=3)
    assert out.items == [(i % 3, 3, i) for k in range(3) for i in range(k, 9, 3)]


@pytest.mark.parametrize("as_object", [False, True], ids=["function", "object"])
def test_async_source_on_two_cores(as_object):
    async def agen():
        for i in range(30):
            await asyncio.sleep(0)
            yield i

    flow = Dataflow()
    out = flow.from_async_iterable(agen() if as_object else agen, batch_size=4).collect()
    run(flow, cores=2)
    assert out.items == [*range(0, 30, 2), *range(1, 30, 2)]


async def test_run_async_on_two_cores_leaves_the_loop_free():
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    flow = Dataflow()
    out = flow.from_iterable(range(100)).key_by(lambda x: x % 4).count().collect()
    task = asyncio.ensure_future(ticker())
    try:
        await run_async(flow, cores=2)
    finally:
        task.cancel()
    assert dict(out.items) == {0: 25, 1: 25, 2: 25, 3: 25}
    assert ticks > 10  # the loop kept turning while the kernels ran


def test_print_on_two_cores(capfd):
    flow = Dataflow()
    flow.from_iterable(range(10), batch_size=3).map(lambda x: x * x).print("sq ")
    run(flow, cores=2)
    lines = capfd.readouterr().out.splitlines()
    assert sorted(lines) == sorted(f"sq {x * x}" for x in range(10))


def test_a_failure_in_a_kernel_process_carries_the_operator_error():
    def parse(x):
        if x == 7:
            raise ValueError("seven")
        return x

    flow = Dataflow()
    flow.from_iterable(range(20), batch_size=20).map(parse).collect()
    with pytest.raises(KernelError) as info:
        run(flow, cores=2)
    err = info.value
    cause = err.__cause__ if not isinstance(err, OperatorError) else err
    assert isinstance(cause, OperatorError)
    assert cause.operator == "map(parse) (step 1)"
    assert cause.function.endswith("parse")
    assert cause.record == "7"
    assert cause.error == "ValueError: seven"
    assert "kernel 1" in str(err)  # record 7 is kernel 1's (7 % 2)


def test_aggregates_pre_aggregate_before_the_exchange(tmp_path):
    """With a combiner, the owner of a key merges one partial result per
    kernel instead of every record: `fn` sees the partial sums."""
    log = tmp_path / "merges"

    def add(acc, value):
        if value > 1:  # only a partial result is ever larger than 1
            with open(log, "a") as f:
                f.write(f"{acc} {value}\n")
        return acc + value

    flow = Dataflow()
    out = flow.from_iterable([1] * 100, batch_size=10).key_by(lambda _: "k").reduce(add).collect()
    run(flow, cores=2)
    assert out.items == [("k", 100)]
    # each kernel reduced its 50 ones; the owner merged the two partials once
    assert log.read_text().splitlines() == ["50 50"]


def test_a_failure_in_a_partial_aggregate_names_its_stage():
    def pick(acc, value):
        if value == 3:
            raise ValueError("three")
        return value

    flow = Dataflow()
    flow.from_iterable(range(8), batch_size=8).key_by(lambda v: v % 2).reduce(pick).collect()
    with pytest.raises(KernelError) as info:
        run(flow, cores=2)
    err = info.value
    cause = err.__cause__ if not isinstance(err, OperatorError) else err
    assert isinstance(cause, OperatorError)
    assert cause.operator == "reduce(pick) (step 2), partial before the exchange"
    assert cause.record == "(1, 3)"
