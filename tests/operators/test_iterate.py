"""Loops (`Stream.iterate`): graph algorithms against their textbook
references, exact on 1, 2 and 3 kernels; rounds that end by themselves;
per-round aggregates; nested loops; what is refused when the flow is built."""

from __future__ import annotations

import heapq
import re
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelError, KernelProcessError, Operator, run
from kernel.dataflow._graph import Edge

EXAMPLES = settings(max_examples=8, deadline=None)
cores = st.sampled_from([1, 2, 3])
batch_sizes = st.sampled_from([1, 3, 1024])

graphs = st.integers(1, 24).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)),
                                              max_size=3 * n)))


# -- connected components by label propagation vs union-find ------------------------

def label_propagation(flow, vertices, edges, batch_size):
    """Each vertex's component: the least vertex it is connected to."""
    both_ways = flow.from_iterable([*edges, *((v, u) for u, v in edges)], batch_size=batch_size)
    neighbours = both_ways.key_by(lambda e: e[0]).map_values(lambda e: e[1])

    def round_(labels):
        least = labels.key_by(lambda p: p[0]).map_values(lambda p: p[1]).reduce(min)
        improved = least.stateful_map(
            lambda best, label: (label, label) if best is None or label < best else (best, None)
        ).filter(lambda p: p[1] is not None)
        rekeyed = improved.key_by(lambda p: p[0]).map_values(lambda p: p[1])
        spread = rekeyed.join(neighbours).map(lambda p: (p[1][1], p[1][0]))
        return spread, improved

    start = flow.from_iterable([(v, v) for v in vertices], batch_size=batch_size)
    return start.iterate(round_).key_by(lambda p: p[0]).map_values(lambda p: p[1]).reduce(min).collect()


def union_find(vertices, edges):
    parent = {v: v for v in vertices}

    def find(v):
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for u, v in edges:
        a, b = find(u), find(v)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {v: find(v) for v in vertices}


@EXAMPLES
@given(graphs, batch_sizes, cores)
def test_connected_components_equal_union_find(graph, batch_size, n):
    size, edges = graph
    flow = Dataflow()
    out = label_propagation(flow, range(size), edges, batch_size)
    run(flow, cores=n)
    assert len(out.items) == size
    assert dict(out.items) == union_find(range(size), edges)


# -- single-source shortest paths vs Dijkstra ----------------------------------------

weighted = st.integers(1, 20).flatmap(
    lambda n: st.tuples(st.just(n), st.lists(
        st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.integers(0, 9)), max_size=4 * n)))


def dijkstra(size, edges, source):
    adjacent: dict = {}
    for u, v, w in edges:
        adjacent.setdefault(u, []).append((v, w))
    best = {source: 0}
    queue = [(0, source)]
    while queue:
        d, u = heapq.heappop(queue)
        if d > best[u]:
            continue
        for v, w in adjacent.get(u, ()):
            if d + w < best.get(v, d + w + 1):
                best[v] = d + w
                heapq.heappush(queue, (d + w, v))
    return best


@EXAMPLES
@given(weighted, batch_sizes, cores)
def test_shortest_paths_equal_dijkstra(graph, batch_size, n):
    size, edges = graph
    flow = Dataflow()
    out_edges = flow.from_iterable(edges, batch_size=batch_size).key_by(lambda e: e[0]).map_values(
        lambda e: (e[1], e[2]))

    def relax(distances):
        least = distances.key_by(lambda p: p[0]).map_values(lambda p: p[1]).reduce(min)
        shorter = least.stateful_map(
            lambda best, d: (d, d) if best is None or d < best else (best, None)
        ).filter(lambda p: p[1] is not None)
        rekeyed = shorter.key_by(lambda p: p[0]).map_values(lambda p: p[1])
        further = rekeyed.join(out_edges).map(lambda p: (p[1][1][0], p[1][0] + p[1][1][1]))
        return further, shorter

    found = flow.from_iterable([(0, 0)]).iterate(relax)
    out = found.key_by(lambda p: p[0]).map_values(lambda p: p[1]).reduce(min).collect()
    run(flow, cores=n)
    assert dict(out.items) == dijkstra(size, edges, 0)


# -- transitive closure: distinct() keeps what it has seen across rounds ---------------

def closure(edges):
    """Every (a, c) with a path from a to c, by a plain fixpoint."""
    paths = set(edges)
    while True:
        longer = paths | {(a, d) for a, b in paths for c, d in edges if b == c}
        if longer == paths:
            return paths
        paths = longer


@EXAMPLES
@given(graphs, batch_sizes, cores)
def test_transitive_closure_equals_a_plain_fixpoint(graph, batch_size, n):
    _, edges = graph
    flow = Dataflow()
    by_source = flow.from_iterable(edges, batch_size=batch_size).key_by(lambda e: e[0]).map_values(
        lambda e: e[1])

    def extend(paths):  # a path seen before, in any round, goes no further
        new = paths.distinct()
        longer = new.key_by(lambda p: p[1]).map_values(lambda p: p[0]).join(by_source)
        return longer.map(lambda p: (p[1][0], p[1][1])), new

    out = flow.from_iterable(edges, batch_size=batch_size).iterate(extend).collect()
    run(flow, cores=n)
    assert sorted(out.items) == sorted(closure(edges))


# -- PageRank for a fixed number of rounds vs a plain loop ----------------------------

DAMPING = 0.85


def pagerank_reference(size, edges, rounds):
    out_degree = Counter(u for u, _ in edges)
    ranks = {v: 1.0 / size for v in range(size)}
    for _ in range(rounds):
        incoming = dict.fromkeys(range(size), 0.0)
        for u, v in edges:
            incoming[v] += ranks[u] / out_degree[u]
        ranks = {v: (1 - DAMPING) / size + DAMPING * incoming[v] for v in range(size)}
    return ranks


def pagerank_flow(flow, size, edges, rounds, batch_size=1024):
    out_degree = Counter(u for u, _ in edges)
    links = flow.from_iterable(edges, batch_size=batch_size).key_by(lambda e: e[0]).map_values(
        lambda e: (e[1], 1.0 / out_degree[e[0]]))

    def step(ranks):  # ranks: (vertex, rank, rounds done)
        keyed = ranks.key_by(lambda r: r[0]).map_values(lambda r: (r[1], r[2]))
        shares = keyed.join(links).map(lambda p: ((p[1][1][0], p[1][0][1]), p[1][0][0] * p[1][1][1]))
        own = ranks.map(lambda r: ((r[0], r[2]), 0.0))  # every vertex, with or without links in
        summed = shares.union(own).key_by(lambda p: p[0]).map_values(lambda p: p[1]).sum()
        new = summed.map(lambda p: (p[0][0], (1 - DAMPING) / size + DAMPING * p[1], p[0][1] + 1))
        return new.filter(lambda r: r[2] < rounds), new.filter(lambda r: r[2] == rounds)

    start = flow.from_iterable([(v, 1.0 / size, 0) for v in range(size)], batch_size=batch_size)
    return start.iterate(step)


@EXAMPLES
@given(graphs, st.integers(1, 6), cores)
def test_pagerank_equals_a_plain_loop(graph, rounds, n):
    size, edges = graph
    flow = Dataflow()
    out = pagerank_flow(flow, size, edges, rounds).collect()
    run(flow, cores=n)
    expected = pagerank_reference(size, edges, rounds)
    got = {v: rank for v, rank, _ in out.items}
    assert len(out.items) == size
    assert got.keys() == expected.keys()
    assert all(abs(got[v] - expected[v]) <= 1e-9 for v in expected)


# -- loops that end by themselves, per-round aggregates -------------------------------

def collatz_steps(n):
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


@EXAMPLES
@given(st.lists(st.integers(1, 500), max_size=40), batch_sizes, cores)
def test_collatz_steps_the_loop_ends_by_itself(numbers, batch_size, n):
    def step(walks):  # (start, now, steps)
        on = walks.map(lambda w: (w[0], w[1] // 2 if w[1] % 2 == 0 else 3 * w[1] + 1, w[2] + 1))
        return on.filter(lambda w: w[1] != 1), on.filter(lambda w: w[1] == 1)

    flow = Dataflow()
    start = flow.from_iterable(numbers, batch_size=batch_size)
    ones = start.filter(lambda x: x == 1).map(lambda x: (x, x, 0))  # already there
    done = start.filter(lambda x: x != 1).map(lambda x: (x, x, 0)).iterate(step)
    out = done.union(ones).map(lambda w: (w[0], w[2])).collect()
    run(flow, cores=n)
    assert sorted(out.items) == sorted((x, collatz_steps(x)) for x in numbers)


def rounds_of(records, step):
    """The records of each round of a loop whose round is `step` (a plain
    function from one round's records to the next's)."""
    rounds = []
    while records:
        rounds.append(records)
        records = step(records)
    return rounds


@EXAMPLES
@given(st.lists(st.integers(0, 12), max_size=40), batch_sizes, cores)
def test_a_count_inside_a_loop_emits_once_per_round(numbers, batch_size, n):
    def body(values):
        counts = values.key_by(lambda v: v % 3).count()
        tagged = counts.map(lambda c: ("count", c))
        return values.filter(lambda v: v > 0).map(lambda v: v - 1), tagged

    flow = Dataflow()
    out = flow.from_iterable(numbers, batch_size=batch_size).iterate(body).collect()
    run(flow, cores=n)
    expected = []
    for records in rounds_of(numbers, lambda rs: [v - 1 for v in rs if v > 0]):
        expected.extend(("count", item) for item in Counter(v % 3 for v in records).items())
    assert sorted(out.items) == sorted(expected)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_on_round_is_told_each_round_in_order(n):
    class Rounds(Operator):
        def open(self, context):
            self.seen = 0

        def on_batch(self, port, batch):
            self.seen += len(batch)

        def on_round(self, round):
            self.emit([(round, self.seen)])  # state kept from round to round

    def body(values):
        return values.filter(lambda v: v > 0).map(lambda v: v - 1), values.apply(Rounds)

    flow = Dataflow()
    out = flow.from_iterable(range(6)).iterate(body).collect()
    run(flow, cores=n)
    # each kernel's operator: one (round, records so far) per round, rounds in order
    per_kernel: dict = {}
    for round_, seen in out.items:
        per_kernel.setdefault(round_, []).append(seen)
    assert sorted(per_kernel) == list(range(6))
    assert all(len(seen) == n for seen in per_kernel.values())
    # over the kernels, the records so far: 6 + 5 + ... in round 0, 1, ...
    assert [sum(per_kernel[r]) for r in range(6)] == [sum(range(6, 5 - r, -1)) for r in range(6)]


@pytest.mark.parametrize("n", [1, 2])
def test_max_rounds_stops_an_endless_loop(n):
    flow = Dataflow()
    out = flow.from_iterable(["x"]).iterate(lambda s: (s, s), max_rounds=5).collect()
    run(flow, cores=n)
    assert out.items == ["x"] * 5


@pytest.mark.parametrize("n", [1, 3])
def test_an_empty_input_runs_one_empty_round(n):
    flow = Dataflow()
    out = flow.from_iterable([]).iterate(lambda s: (s.map(lambda x: x), s)).collect()
    run(flow, cores=n)
    assert out.items == []


# -- loops inside loops ---------------------------------------------------------------

@EXAMPLES
@given(st.lists(st.integers(0, 30), max_size=20), cores)
def test_a_nested_loop_runs_to_its_fixpoint_in_every_outer_round(numbers, n):
    # outer round: every number x > 0 goes on as x - 1; inner loop, per
    # outer round: x halves down to 0, a count per inner round
    def inner(values):
        halves = values.filter(lambda v: v > 0).map(lambda v: v // 2)
        return halves, values.key_by(lambda v: v % 2).count()

    def outer(values):
        counted = values.iterate(inner)
        return values.filter(lambda v: v > 0).map(lambda v: v - 1), counted

    flow = Dataflow()
    out = flow.from_iterable(numbers).iterate(outer).collect()
    run(flow, cores=n)
    expected = []
    for outer_round in rounds_of(numbers, lambda rs: [v - 1 for v in rs if v > 0]):
        for inner_round in rounds_of(outer_round, lambda rs: [v // 2 for v in rs if v > 0]):
            expected.extend(Counter(v % 2 for v in inner_round).items())
    assert sorted(out.items) == sorted(expected)


@pytest.mark.parametrize("n", [1, 2])
def test_an_outside_stream_enters_a_nested_loop_in_round_zero_of_both(n):
    flow = Dataflow()
    tags = flow.from_iterable(["t"])

    def inner(values):
        return values.filter(lambda v: v > 0).map(lambda v: v - 1), values.union(tags)

    def outer(values):
        return values.filter(lambda v: v > 0).map(lambda v: v - 1), values.iterate(inner)

    out = flow.from_iterable([2]).iterate(outer).collect()
    run(flow, cores=n)
    # outer rounds see 2, 1, 0; the tag's time is (0, 0, 0), as timely's
    # enter gives it: the first inner run's round 0, in outer round 0
    assert sorted(out.items, key=str) == sorted([2, 1, 0, 1, 0, 0, "t"], key=str)


# -- what a step inside a loop emits outside every round -----------------------------

class CountAtTheEnd(Operator):
    """Emits how many records it saw when its input ends."""

    def open(self, context):
        self.seen = 0

    def on_batch(self, port, batch):
        self.seen += len(batch)

    def on_end(self):
        self.emit([self.seen])


class HoldUntilTheWatermark(Operator):
    """Emits what it holds, each number less one, when the watermark moves."""

    def open(self, context):
        self.held = []

    def on_batch(self, port, batch):
        self.held += batch

    def on_watermark(self, watermark):
        held, self.held = self.held, []
        self.emit([v - 1 for v in held if v > 0])


@pytest.mark.parametrize("n", [1, 2])
def test_a_step_inside_a_loop_that_emits_between_rounds_fails_naming_it(n):
    """A watermark, a timer or the end of input reaches a loop's steps only
    between its runs: what a step emitted then went into no round (fed
    back, it was dropped without a word)."""
    flow = Dataflow()
    flow.from_iterable([1, 2]).iterate(lambda values: (values.apply(CountAtTheEnd, name="at-end"), values))
    error = KernelError if n == 1 else KernelProcessError
    with pytest.raises(error, match=re.escape(
            "at-end (step 2): emitted 1 record(s) in test_iterate.CountAtTheEnd.on_end, inside the loop "
            "'iterate(<lambda>)', where no round is under way to take them (a watermark, a timer or the end "
            "of input reaches a loop's steps between its runs): emit in on_batch or on_round, or put the "
            "step after the loop") + "$"):
        run(flow, cores=n)

    flow = Dataflow()
    timed = flow.from_iterable([3], timestamp=lambda v: 0.0)
    timed.iterate(lambda values: (values.apply(HoldUntilTheWatermark, name="held"), values), name="countdown")
    with pytest.raises(error, match=r"held \(step 2\): emitted 1 record\(s\) in test_iterate\."
                                    r"HoldUntilTheWatermark\."
                                    r"on_watermark, inside the loop 'countdown', where no round"):
        run(flow, cores=n)


def test_a_step_after_a_loop_may_emit_on_the_watermark_and_at_the_end():
    flow = Dataflow()
    looped = flow.from_iterable([3], timestamp=lambda v: 0.0).iterate(
        lambda values: (values.filter(lambda v: v > 0).map(lambda v: v - 1), values))
    held = looped.apply(HoldUntilTheWatermark).collect()
    counted = looped.apply(CountAtTheEnd).collect()
    run(flow)
    assert sorted(held.items) == [0, 1, 2]
    assert counted.items == [4]


def _fed_back_error(n: int, make_record=None) -> str:
    """The error of a keyed loop on `n` kernels that feeds back values
    (each made into `make_record(value)` if given), not pairs, while it
    reads only pairs itself."""

    def body(pairs):
        values = pairs.filter(lambda p: isinstance(p, tuple)).map(lambda p: p[1] - 1)
        fed = values.filter(lambda v: v > 0)
        return (fed if make_record is None else fed.map(make_record)), pairs.count()

    flow = Dataflow()
    flow.from_iterable([3]).key_by(lambda v: v % 2).iterate(body)
    with pytest.raises(KernelError) as caught:
        run(flow, cores=n)
    return str(caught.value.__cause__ if n > 1 else caught.value)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_keyed_loop_that_feeds_back_records_not_pairs_fails_naming_the_record(n):
    """The loop's input is keyed, so what comes back must be (key, value)
    pairs: the loop's feedback names the first one that is not and says
    what a keyed stream needs, alike on every number of kernels (the step
    that read it first named it before: the count on one kernel, the
    loop's input on several; and a triple went round as a pair)."""
    assert _fed_back_error(n) == (
        "operator 'iterate(body): feedback (step 7)': function '(key, value) = record' raised ValueError: "
        "a record fed back into a loop on a keyed stream is no (key, value) pair\n  on record: 2\n  a keyed "
        "stream's records are (key, value) pairs (key_by makes them): a loop on a keyed stream must feed "
        "such pairs back")


class _Stop(BaseException):
    """A user's own control-flow exception, outside the Exception hierarchy."""


class _Unpackable:
    """A record that is no pair, whose `__iter__` (what unpacking it calls) raises a Stop."""

    def __iter__(self):
        raise _Stop("no items")

    def __repr__(self):
        return "_Unpackable()"


@pytest.mark.parametrize("n", [1, 2])
def test_a_fed_back_record_whose_unpacking_raises_a_base_exception_is_named_as_no_pair(n):
    """Asking whether it is a pair raised its Stop, on the error path: the
    run failed naming the count's handler (one kernel) or the loop input's
    activation (two), no record and no word of pairs. (The feedback does
    not read an iterable of no length: it may be read once only.)"""
    step = "count (step 7)" if n == 1 else "iterate(body): input (step 2)"
    assert _fed_back_error(n, lambda v: _Unpackable()) == (
        f"operator '{step}': function '(key, value) = record' raised TypeError: '_Unpackable' object is "
        "not subscriptable\n  on record: _Unpackable()\n  a keyed stream's records are (key, value) pairs "
        "(key_by makes them): a loop on a keyed stream must feed such pairs back")


# -- refused when the flow is built ---------------------------------------------------

def test_a_cycle_without_a_round_is_refused_naming_its_steps():
    flow = Dataflow()
    source = flow.from_iterable([1])
    first = source.map(lambda x: x, name="first")
    second = first.map(lambda x: x, name="second")
    out = second.collect()
    first.node.inputs.append(Edge(second.node, 1))  # wired around by hand
    for cores in (1, 2):  # refused before any kernel starts
        with pytest.raises(KernelError, match=r"a cycle without a round: first \(step 1\) <- second "
                                              r"\(step 2\) <- first \(step 1\)"):
            run(flow, cores=cores)
    assert out.items == []


def test_a_back_edge_that_is_not_a_loops_feedback_is_refused():
    flow = Dataflow()
    first = flow.from_iterable([1]).map(lambda x: x, name="first")
    second = first.map(lambda x: x, name="second")
    first.node.inputs.append(Edge(second.node, 1, feedback=True))
    with pytest.raises(KernelError, match=r"first \(step 1\): a back edge from second \(step 2\)"):
        run(flow)


def test_a_step_inside_a_loop_is_not_seen_outside_it():
    flow = Dataflow()
    inside = []

    def body(values):
        inside.append(values.map(lambda x: x, name="inner"))
        return values.filter(lambda x: False), values

    flow.from_iterable([1]).iterate(body)
    with pytest.raises(KernelError, match=r"late: reads inner \(step \d+\), which is inside the loop "
                                          r"'iterate\(body\)'"):
        inside[0].map(lambda x: x, name="late")


def test_bad_bodies_and_options_are_refused():
    flow = Dataflow()
    numbers = flow.from_iterable([1])
    with pytest.raises(TypeError, match="body must return \\(feedback, out\\)"):
        numbers.iterate(lambda s: s)
    with pytest.raises(TypeError, match="needs a callable body"):
        numbers.iterate(42)
    with pytest.raises(ValueError, match="max_rounds must be a positive int"):
        numbers.iterate(lambda s: (s, s), max_rounds=0)
    with pytest.raises(KernelError, match="not inside a loop"):
        from operators import Tumbling

        numbers.iterate(lambda s: (s, s.key_by(str).window(Tumbling(1.0)).count()))
    # a failed body leaves the flow usable, outside every loop, without its steps
    assert numbers.map(str).node.loop is None
    out = numbers.map(lambda x: x + 1).collect()
    run(flow)
    assert out.items == [2]
    assert not flow.graph.loops


def test_a_windowed_join_inside_a_loop_is_refused_like_a_window():
    """Its results come when the watermark closes a window, which is after
    a run's last round: fed back, they went into no round (lost)."""
    from operators import Tumbling

    flow = Dataflow()
    side = flow.from_iterable([(3, "c")], timestamp=lambda e: 0.5).key_by(lambda e: e[0])
    numbers = flow.from_iterable([3], timestamp=lambda e: 0.5)

    def body(values):
        met = values.key_by(lambda v: v).join(side, Tumbling(1.0))
        return met.map(lambda r: r[0] - 1).filter(lambda v: v > 0), values

    with pytest.raises(KernelError, match=r"^join Tumbling\(1\.0\): not inside a loop \(iterate\(body\)\): "
                                          r"a windowed join needs event time, and a loop's rounds have none; "
                                          r"put it after the loop, or join without a window$"):
        numbers.iterate(body)
    # joined without a window, every round's values meet the side at once
    def unwindowed(values):
        met = values.key_by(lambda v: v).join(side)
        return met.map(lambda r: r[0] - 1).filter(lambda v: v > 0), values

    out = numbers.iterate(unwindowed).collect()
    run(flow)
    assert out.items == [3, 2]


def test_a_source_made_inside_the_body_enters_the_loop():
    flow = Dataflow()

    def body(values):
        extra = flow.from_iterable(["e"])
        return values.filter(lambda x: False), values.union(extra)

    out = flow.from_iterable(["v"]).iterate(body).collect()
    run(flow)
    assert sorted(out.items) == ["e", "v"]


# -- event time: each outer time to its fixpoint, windows after the loop exact --------

def collatz_body(walks):  # (start, now, steps); map and filter keep event time
    on = walks.map(lambda w: (w[0], w[1] // 2 if w[1] % 2 == 0 else 3 * w[1] + 1, w[2] + 1))
    return on.filter(lambda w: w[1] != 1), on.filter(lambda w: w[1] == 1)


@EXAMPLES
@given(st.lists(st.tuples(st.floats(0, 20, allow_nan=False), st.integers(2, 300)), max_size=40),
       st.sampled_from([1, 2, 5]), cores, st.sampled_from([None, 1, 3]))
def test_windows_after_a_loop_over_event_time_are_exact(events, batch_size, n, max_in_flight):
    events = sorted(events)  # in time order: none is late at the source
    flow = Dataflow()
    timed = flow.from_iterable(events, timestamp=lambda e: e[0], batch_size=batch_size)
    done = timed.map(lambda e: (e[1], e[1], 0)).iterate(collatz_body, max_in_flight=max_in_flight)
    from operators import Tumbling

    sums = done.key_by(lambda w: "all").map_values(lambda w: w[2]).window(Tumbling(2.0)).sum()
    out = sums.collect()
    run(flow, cores=n)
    expected: Counter = Counter()
    for t, x in events:
        expected[2.0 * (t // 2.0)] += collatz_steps(x)
    assert sums.late_count.value == 0  # the watermark never passed the loop ahead of its results
    assert {w.start: total for _, w, total in out.items} == dict(expected)
    assert len(out.items) == len(expected)


def test_a_window_after_a_loop_whose_feedback_loses_event_time_is_refused_naming_the_step():
    """Round 0 has the source's times, later rounds what a count fed back,
    which has none: refused when the flow is built, as after a union with
    such a stream, naming the count (it failed at run time, naming only
    the loop's out as a step that might drop them)."""
    from operators import Tumbling

    flow = Dataflow()
    timed = flow.from_iterable([(0.5, 3)], timestamp=lambda e: e[0])

    def body(values):
        counted = values.key_by(lambda v: v[1]).count(name="per value")
        return counted.map(lambda p: (0.0, p[0] - 1)).filter(lambda p: p[1] > 0), values

    looped = timed.iterate(body)
    keyed = looped.key_by(lambda v: "all").map_values(lambda v: 1)
    with pytest.raises(KernelError, match=re.escape(
            "window(Tumbling(1.0)): windows need event time, but it is lost on the way at step per value "
            "(step 3), a keyed aggregate (its results carry no event time): give the source timestamp=...")):
        keyed.window(Tumbling(1.0))
    # with the times kept (a map instead of the count), the same window is exact
    flow = Dataflow()
    looped = flow.from_iterable([(0.5, 3)], timestamp=lambda e: e[0]).iterate(
        lambda values: (values.filter(lambda v: v[1] > 0).map(lambda v: (v[0], v[1] - 1)), values))
    sums = looped.key_by(lambda v: "all").map_values(lambda v: 1).window(Tumbling(1.0)).count().collect()
    run(flow)
    assert [(w.start, n) for _, w, n in sums.items] == [(0.0, 4)]


def test_an_endless_source_gets_results_through_a_loop_before_it_ends():
    """The outer watermark passes the loop once every round for the times
    before it is done: a window after the loop closes while the source
    still waits (for that very result)."""
    import asyncio

    seen = asyncio.Event()
    waited: list = []

    async def events():
        for t in (0.1, 0.5, 1.2):  # the watermark reaches 1.2: the window [0, 1) may close
            yield (t, 27)
        try:
            await asyncio.wait_for(seen.wait(), 10)
            waited.append("window closed before the input ended")
        except TimeoutError:
            waited.append("timed out")
        yield (5.0, 7)

    from operators import Tumbling

    flow = Dataflow()
    timed = flow.from_async_iterable(events, timestamp=lambda e: e[0], batch_size=1)
    done = timed.map(lambda e: (e[1], e[1], 0)).iterate(collatz_body)
    windows = done.key_by(lambda w: "all").map_values(lambda w: w[2]).window(Tumbling(1.0)).sum()
    out = windows.inspect(lambda r: seen.set()).collect()
    run(flow)
    assert waited == ["window closed before the input ended"]
    assert [(w.start, total) for _, w, total in out.items] == [
        (0.0, 2 * collatz_steps(27)), (1.0, collatz_steps(27)), (5.0, collatz_steps(7))]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_kernel_whose_input_is_idle_holds_back_no_run_of_a_loop(n, tmp_path):
    """Each kernel reads its share of the source: one whose share has
    stopped goes idle (idle_timeout), and, as outside a loop, its watermark
    then holds back nothing: the loop runs on the others' and a window
    after it closes while the source still waits (for that very window).
    Every copy of the source waits for the window at most 5 s, and says
    so in a file if it had to stop waiting."""
    import asyncio

    from operators import Tumbling

    gate, waited = tmp_path / "window closed", tmp_path / "gave up waiting"

    async def events():
        for event in ((0.5, 3), (1.5, 2)):  # fewer than kernels, or one each: a share stops early
            yield event
        for _ in range(500):
            if gate.exists():
                return
            await asyncio.sleep(0.01)
        waited.touch()

    def countdown(values):
        return values.filter(lambda v: v[1] > 0).map(lambda v: (v[0], v[1] - 1)), values

    flow = Dataflow()
    timed = flow.from_async_iterable(events, timestamp=lambda e: e[0], batch_size=1, idle_timeout=0.05)
    counts = timed.iterate(countdown).key_by(lambda v: "all").map_values(lambda v: 1).window(
        Tumbling(1.0)).count()
    out = counts.inspect(lambda window: gate.touch()).collect()
    run(flow, cores=n)
    assert not waited.exists()
    assert sorted((w.start, count) for _, w, count in out.items) == [(0.0, 4), (1.0, 3)]


@pytest.mark.parametrize("n", [1, 2])
def test_an_idle_stream_entering_a_loop_holds_back_none_of_its_runs(n, tmp_path):
    """A stream from outside used in the body has an entry of its own: once
    its source is idle, the loop runs on its input's watermark alone (on
    one kernel too), and a window after the loop closes while both sources
    still wait for it (5 s at most, said in a file if they gave up)."""
    import asyncio

    from operators import Tumbling

    gate, waited = tmp_path / "window closed", tmp_path / "gave up waiting"

    def waiting_after(events):
        async def source():
            for event in events:
                yield event
            for _ in range(500):
                if gate.exists():
                    return
                await asyncio.sleep(0.01)
            waited.touch()
        return source

    flow = Dataflow()
    values = flow.from_async_iterable(waiting_after([(0.4 * t, 2) for t in range(8)]),
                                      timestamp=lambda e: e[0], batch_size=1, idle_timeout=0.05)
    tags = flow.from_async_iterable(waiting_after([(0.1, "tag")]), timestamp=lambda e: e[0],
                                    idle_timeout=0.05)

    def body(pairs):  # (time, count down); the tag comes in round 0
        down = pairs.filter(lambda v: v[1] > 0).map(lambda v: (v[0], v[1] - 1))
        return down, pairs.union(tags)

    windows = values.iterate(body).key_by(lambda v: "all").map_values(lambda v: 1).window(
        Tumbling(1.0)).count()
    out = windows.inspect(lambda window: gate.touch()).collect()
    run(flow, cores=n)
    assert not waited.exists()
    expected = Counter(0.4 * t // 1.0 for t in range(8) for _ in range(3)) + Counter([0.0])
    assert sorted((w.start, count) for _, w, count in out.items) == sorted(expected.items())


@pytest.mark.parametrize("n", [1, 2])
def test_inputs_all_idle_or_ended_hold_a_loop_at_the_idle_ones_watermark(n):
    """With no input active, the idle ones' watermark (the largest) is the
    loop's, as a window's is, not +inf: a source idle before its first
    record (everything else ended) still gets that record into the window
    it belongs to, not late."""
    import asyncio

    from operators import Tumbling

    async def later():
        await asyncio.sleep(0.2)  # idle (idle_timeout=0.05) before it yields anything
        yield (0.5, 1)

    flow = Dataflow()
    first = flow.from_iterable([(0.2, 2)], timestamp=lambda e: e[0])
    second = flow.from_async_iterable(later, timestamp=lambda e: e[0], idle_timeout=0.05)
    looped = first.union(second).iterate(
        lambda values: (values.filter(lambda v: v[1] > 0).map(lambda v: (v[0], v[1] - 1)), values))
    counts = looped.key_by(lambda v: "all").map_values(lambda v: 1).window(Tumbling(1.0)).count()
    out = counts.collect()
    run(flow, cores=n)
    assert [(w.start, count) for _, w, count in out.items] == [(0.0, 3 + 2)]
    assert counts.late_count.value == 0


@pytest.mark.parametrize("n", [1, 2, 3])
def test_each_outer_time_iterates_to_its_own_fixpoint(n):
    """Times far apart, a batch each, run as the watermark passes them
    (several may share a run): a count keyed by time, per round, is each
    time's own, as if it ran alone."""
    events = [(float(t), x) for t in range(0, 40, 4) for x in (3, 4, 5)]

    def body(values):  # (time, x): x counts down; per round, how many of each time
        counted = values.key_by(lambda v: v[0]).count()
        return values.filter(lambda v: v[1] > 0).map(lambda v: (v[0], v[1] - 1)), counted

    flow = Dataflow()
    out = flow.from_iterable(events, timestamp=lambda e: e[0], batch_size=3).iterate(body).collect()
    run(flow, cores=n)
    expected = []
    for t in range(0, 40, 4):
        for records in rounds_of([3, 4, 5], lambda rs: [x - 1 for x in rs if x > 0]):
            expected.append((float(t), len(records)))
    assert sorted(out.items) == sorted(expected)


# -- flow control (Faucet) --------------------------------------------------------------

class RoundSizes(Operator):
    """Emits, at the end of each round, how many records it saw in it."""

    def open(self, context):
        self.seen = 0

    def on_batch(self, port, batch):
        self.seen += len(batch)

    def on_round(self, round):
        self.emit([("size", self.seen)])
        self.seen = 0


def fan_out_flow(roots, max_in_flight, n):
    """Each root (name, depth 3) splits in 4 every round down to depth 0."""
    def body(nodes):
        children = nodes.filter(lambda v: v[1] > 0).flat_map(lambda v: [(v[0], v[1] - 1)] * 4)
        leaves = nodes.filter(lambda v: v[1] == 0)
        return children, leaves.union(nodes.apply(RoundSizes))

    flow = Dataflow()
    out = flow.from_iterable([(r, 3) for r in roots], batch_size=7).iterate(
        body, max_in_flight=max_in_flight).collect()
    run(flow, cores=n)
    sizes = [size for tag, size in out.items if tag == "size"]
    leaves = Counter(root for root, depth in out.items if root != "size")
    return sizes, leaves


@pytest.mark.parametrize("n", [1, 2, 3])
def test_max_in_flight_bounds_what_circulates_and_loses_nothing(n):
    roots = list(range(60))
    sizes, leaves = fan_out_flow(roots, 2, n)
    assert leaves == {root: 4 ** 3 for root in roots}  # every root's 64 leaves, exactly
    assert max(sizes) <= 2 * 4 ** 3  # a kernel's round: at most 2 roots' worth
    unbounded, same = fan_out_flow(roots, None, n)
    assert same == leaves
    assert max(unbounded) > 2 * 4 ** 3  # without it, a round holds them all at once


@EXAMPLES
@given(st.lists(st.integers(0, 9), max_size=30), cores)
def test_sum_reduce_and_fold_inside_a_loop_emit_each_rounds_result(numbers, n):
    def body(values):
        keyed = values.key_by(lambda v: v % 3)
        sums = keyed.sum().map(lambda p: ("sum", p))
        maxima = keyed.reduce(max).map(lambda p: ("max", p))
        lists = keyed.fold(list, lambda acc, v: [*acc, v]).map(lambda p: ("fold", (p[0], sorted(p[1]))))
        return values.filter(lambda v: v > 0).map(lambda v: v - 1), sums.union(maxima, lists)

    flow = Dataflow()
    out = flow.from_iterable(numbers, batch_size=4).iterate(body).collect()
    run(flow, cores=n)
    expected = []
    for records in rounds_of(numbers, lambda rs: [v - 1 for v in rs if v > 0]):
        groups: dict = {}
        for v in records:
            groups.setdefault(v % 3, []).append(v)
        for key, values in groups.items():
            expected += [("sum", (key, sum(values))), ("max", (key, max(values))),
                         ("fold", (key, sorted(values)))]
    assert sorted(out.items) == sorted(expected)


@pytest.mark.parametrize("n", [1, 2])
def test_a_keyed_stream_iterates_and_stays_keyed(n):
    flow = Dataflow()
    keyed = flow.from_iterable(["aa", "b", "ccc"]).key_by(len)

    def body(pairs):  # (length, word): shorten each word until it is gone
        shorter = pairs.map_values(lambda w: w[1:]).filter(lambda p: p[1] != "")
        return shorter, pairs

    result = keyed.iterate(body)
    out = result.count().collect()  # a KeyedStream: aggregates follow directly
    run(flow, cores=n)
    assert type(result).__name__ == "KeyedStream"
    assert sorted(out.items) == [(1, 1), (2, 2), (3, 3)]
