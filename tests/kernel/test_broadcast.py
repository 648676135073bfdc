"""`Stream.broadcast()`: every record on every kernel, progress after the
records it follows, a clear error for a record that cannot cross, and a
state_dir that resumes only on as many kernels as wrote it. Results are
checked against plain loops, on one to three kernels and on a cluster of
two processes."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_cluster import outcomes_of

from kernel import Dataflow, Operator, run
from state import StateError

pytestmark = pytest.mark.usefixtures("no_leaks")


class Enrich(Operator):
    """Port 0: `(product, price)` rows (broadcast); port 1: `(product,
    amount)` facts (each kernel its share). Emits `(product, amount *
    price)` once the product's row is there; facts wait for it."""

    def open(self, context):
        self.prices: dict = {}
        self.waiting: dict = {}

    def on_batch(self, port, batch):
        out = []
        if port == 0:
            for product, price in batch:
                self.prices[product] = price
                out += [(product, amount * price) for amount in self.waiting.pop(product, ())]
        else:
            prices = self.prices
            for product, amount in batch:
                price = prices.get(product)
                if price is None:
                    self.waiting.setdefault(product, []).append(amount)
                else:
                    out.append((product, amount * price))
        if out:
            self.emit(out)


class Seen(Operator):
    """Keeps what reached it on its kernel, for `result()`: the records, and
    any record that came behind a watermark already seen."""

    def open(self, context):
        self.records: list = []
        self.behind: list = []
        self.watermark = -math.inf

    def on_batch(self, port, batch):
        self.records += batch
        stamps = getattr(batch, "timestamps", None)
        if stamps is not None:
            self.behind += [r for r, t in zip(batch, stamps) if t < self.watermark]
        self.emit(batch)

    def on_watermark(self, watermark):
        self.watermark = watermark

    def result(self):
        return sorted(self.records), self.behind, self.watermark


def enriched(facts: list, prices: dict, cores: int) -> list:
    flow = Dataflow("enrich")
    rows = flow.from_iterable(sorted(prices.items())).broadcast()
    out = rows.apply(Enrich, inputs=(flow.from_iterable(facts),)).collect()
    run(flow, cores=cores)
    return sorted(out.items)


@settings(max_examples=6, deadline=None)
@given(facts=st.lists(st.tuples(st.integers(0, 30), st.integers(-5, 5)), max_size=300),
       prices=st.dictionaries(st.integers(0, 30), st.integers(1, 9), max_size=31),
       cores=st.integers(1, 3))
@example(facts=[(p % 20, p) for p in range(2_000)], prices={p: p + 1 for p in range(20)}, cores=3)
def test_a_broadcast_table_joins_each_kernels_share_as_a_plain_loop_does(facts, prices, cores):
    expected = sorted((p, amount * prices[p]) for p, amount in facts if p in prices)
    assert enriched(facts, prices, cores) == expected


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_every_kernel_gets_every_record_and_none_behind_a_watermark(cores):
    """An ordered source: on every kernel each broadcast record comes before
    the watermark that passes it, as on an exchange, and the end comes."""
    events = [(i, i * 0.01) for i in range(3_000)]
    flow = Dataflow("everywhere")
    source = flow.from_iterable(events, timestamp=lambda e: e[1], batch_size=64)
    seen = source.broadcast().apply(Seen, name="seen")
    everywhere = seen.collect()
    run(flow, cores=cores)
    assert len(seen.results) == cores
    for records, behind, watermark in seen.results:
        assert records == events
        assert behind == []
        assert watermark == math.inf
    assert sorted(everywhere.items) == sorted(events * cores)


def test_a_keyed_streams_pairs_reach_every_kernel_and_key_by_after_it_places_them_again():
    flow = Dataflow("keyed")
    pairs = flow.from_iterable(range(100)).key_by(lambda n: n % 7)
    counts = pairs.broadcast().map(lambda pair: pair[0]).key_by(lambda k: k).count().collect()
    run(flow, cores=3)
    assert sorted(counts.items) == sorted((k, 3 * sum(1 for n in range(100) if n % 7 == k)) for k in range(7))


def test_a_record_that_cannot_cross_names_the_step_before_the_broadcast():
    flow = Dataflow("unpicklable")
    flow.from_iterable([1, 2]).map(lambda n: (lambda: n), name="makes lambdas").broadcast().collect()
    with pytest.raises(Exception) as raised:  # (kernel 0 or 1 failed: OperatorError ...)
        run(flow, cores=2)
    message = str(raised.value)
    assert "operator 'makes lambdas (step 1)': function 'pickle.dumps' raised" in message
    assert "broadcast()'s, sent to every kernel" in message


def test_one_kernel_passes_the_records_as_they_are():
    flow = Dataflow("one")
    out = flow.from_iterable(["a", "b"]).broadcast().map(str.upper).collect()
    run(flow)
    assert out.items == ["A", "B"]


def _counted(state_dir, cores: int, items: list) -> list:
    flow = Dataflow("broadcast counts")
    rows = flow.from_iterable(items).broadcast()
    out = rows.key_by(lambda n: n % 3).count().collect()
    run(flow, cores=cores, state_dir=state_dir)
    return sorted(out.items)


def test_a_state_dir_of_a_flow_with_broadcast_resumes_only_on_as_many_kernels(tmp_path):
    items = list(range(30))
    assert _counted(tmp_path, 2, items) == [(k, 2 * 10) for k in range(3)]
    with pytest.raises(StateError, match=r"was written by 2 kernels and this run has 3: a flow with "
                                         r"broadcast\(\) resumes on as many kernels"):
        _counted(tmp_path, 3, items)
    _counted(tmp_path, 2, items)  # (as many: it runs, restored as ended)


def test_a_broadcast_inside_a_loop_reaches_every_kernel_each_round():
    """Each round's records go to every kernel: three kernels triple them a
    round, so `n` halves to 0 with 3**rounds copies of each start."""
    flow = Dataflow("loop")

    def body(numbers):
        halved = numbers.broadcast().map(lambda n: n // 2)
        return halved.filter(lambda n: n > 0), halved.filter(lambda n: n == 0)

    out = flow.from_iterable([1, 2, 4]).iterate(body).collect()
    run(flow, cores=3)
    # 1 -> 0 after one round (3 copies), 2 -> 1 -> 0 (9), 4 -> 2 -> 1 -> 0 (27)
    assert out.items == [0] * (3 + 9 + 27)


FACTS = [(i % 41, i % 11 - 5) for i in range(4_000)]  # (41: each kernel's share has every product)
PRICES = {p: p % 7 + 1 for p in range(41)}


def _share(items: list):
    return lambda index, peers: items[index::peers]


def enrich_flow():
    """Each kernel of each process reads its share of both inputs."""
    flow = Dataflow("enrich on a cluster")
    rows = flow.from_partitions(_share(sorted(PRICES.items()))).broadcast()
    out = rows.apply(Enrich, inputs=(flow.from_partitions(_share(FACTS)),)).collect()
    return flow, [out]


def test_a_cluster_of_two_processes_joins_with_a_broadcast_table_as_a_plain_loop_does():
    expected = sorted(repr((p, amount * PRICES[p])) for p, amount in FACTS)
    outcomes = outcomes_of(enrich_flow, 2, 2)
    assert outcomes[0] == ("ok", [expected])
    assert outcomes[1] == ("ok", [[]])
