"""The budget held: sources pace their batches by what their chain costs, a
chain whose work outgrows the budget hands the rest to a later tick, and
full collections leave the host's heap alone (the host's turns are tested
in tests/test_claims.py, "Host turns"). Exact on a virtual clock, where
operators advance the clock by what their work "costs"; one check on the
real clock, in this thread's CPU time."""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, Operator, Source, VirtualClock, run_async
from kernel._interpreter_gc import INTERPRETER_FROZEN

HOST = "host"
BUDGET = 0.001


async def with_host(flow, clock, **options) -> list:
    """Runs `flow` on this loop beside a host task that notes each of its
    turns; returns the trace the flow's operators wrote into, with a HOST
    entry (and the clock's reading) for every host turn."""
    trace = flow.trace
    running = True

    async def host():
        while running:
            trace.append((HOST, clock.monotonic()))
            await asyncio.sleep(0)

    task = asyncio.create_task(host())
    await asyncio.sleep(0)
    try:
        await run_async(flow, clock=clock, **options)
    finally:
        running = False
        await task
    return trace


def slices(trace) -> list[list]:
    """The entries between host turns (turns with nothing between left out)."""
    out, current = [], []
    for entry in trace:
        if entry[0] == HOST:
            if current:
                out.append(current)
            current = []
        else:
            current.append(entry)
    if current:
        out.append(current)
    return out


def slice_times(trace) -> list[float]:
    """Virtual seconds between consecutive host turns that had work between them."""
    times, last, worked = [], None, False
    for entry in trace:
        if entry[0] == HOST:
            if last is not None and worked:
                times.append(entry[1] - last)
            last, worked = entry[1], False
        else:
            worked = True
    return times


class Costly(Operator):
    """Passes records on; each costs `per_record(x)` seconds of the virtual
    clock, and each batch `per_batch` more; notes each batch's size."""

    def __init__(self, clock, trace, per_record=lambda x: 0.0, per_batch=0.0, name="costly"):
        self.clock, self.trace = clock, trace
        self.per_record, self.per_batch, self.label = per_record, per_batch, name

    def on_batch(self, port, batch):
        self.trace.append((self.label, len(batch)))
        self.clock.advance(self.per_batch + sum(map(self.per_record, batch)))
        self.emit(batch)


def costly_flow(clock, records, batch_size=1024, **cost) -> Dataflow:
    flow = Dataflow("paced")
    flow.trace = []
    out = flow.from_iterable(range(records), batch_size=batch_size).apply(
        lambda: Costly(clock, flow.trace, **cost), name="costly").collect()
    flow.out = out
    return flow


# -- a source's pace ------------------------------------------------------------------


async def test_a_source_asks_for_what_fits_in_the_slice():
    """Every record costs 0.1 ms: the first poll reads 16 records (nothing
    known yet), every later one the 10 that fit in the 1 ms budget, so each
    slice after the first ends exactly at its deadline, and the host runs
    after each."""
    clock = VirtualClock()
    flow = costly_flow(clock, 200, per_record=lambda x: 0.0001)
    trace = await with_host(flow, clock)
    assert flow.out.items == list(range(200))
    assert [[size for _, size in s] for s in slices(trace)] == [[16]] + [[10]] * 18 + [[4]]
    assert slice_times(trace)[1:] == pytest.approx([0.001] * 18 + [0.0004])


async def test_a_chain_that_gets_dearer_is_paced_again_within_a_few_polls():
    """From record 100 on a record costs twice as much: a few slices run
    past their deadline while the pace learns it (each by less than the
    budget), then they fit again, 5 records each."""
    clock = VirtualClock()
    flow = costly_flow(clock, 300, per_record=lambda x: 0.0001 if x < 100 else 0.0002)
    trace = await with_host(flow, clock)
    assert flow.out.items == list(range(300))
    times = slice_times(trace)[1:-1]  # not the first poll's (16 records) nor the last's
    over = [t for t in times if t > BUDGET + 1e-12]
    assert 1 <= len(over) <= 3 and max(over) <= 2 * BUDGET + 1e-12
    sizes = [size for s in slices(trace) for _, size in s]
    assert sizes[-12:-1] == [5] * 11


async def test_a_pause_in_one_poll_is_not_taken_for_the_chains_cost():
    """Record 100 takes 20 ms (the process preempted, a collection): that
    poll runs long, but the next ones still read 10 records (0.1 ms each)."""
    clock = VirtualClock()
    flow = costly_flow(clock, 200, per_record=lambda x: 0.02 if x == 100 else 0.0001)
    trace = await with_host(flow, clock)
    assert flow.out.items == list(range(200))
    assert [[size for _, size in s] for s in slices(trace)] == [[16]] + [[10]] * 18 + [[4]]


async def test_a_fixed_cost_per_batch_makes_small_batches_dear_and_no_poll_starts_late():
    """0.4 ms per batch and 0.01 ms per record: 60 records fill a slice. The
    pace gets there from below (a small batch costs more per record), and
    once it has seen a few polls no slice runs past its deadline: a poll
    that would start in a slice's last quarter waits for the next slice
    (so each slice is one poll)."""
    clock = VirtualClock()
    flow = costly_flow(clock, 1500, per_record=lambda x: 0.00001, per_batch=0.0004)
    trace = await with_host(flow, clock)
    assert flow.out.items == list(range(1500))
    polls = [[size for _, size in s] for s in slices(trace)]
    assert all(len(s) == 1 for s in polls[3:])
    sizes = [s[0] for s in polls[3:-1]]
    assert sizes == sorted(sizes) and 57 <= sizes[-1] <= 60
    assert max(slice_times(trace)[3:]) <= BUDGET


async def test_a_batch_that_costs_more_than_the_budget_however_small_is_not_made_smaller():
    """5 ms per batch whatever its size (a flush per batch, say): smaller
    batches would not hold the budget, only cost throughput, so the pace
    asks for batch_size (not one record at a time)."""
    clock = VirtualClock()
    flow = costly_flow(clock, 2000, batch_size=256, per_record=lambda x: 1e-6, per_batch=0.005)
    trace = await with_host(flow, clock)
    assert flow.out.items == list(range(2000))
    sizes = [size for s in slices(trace) for _, size in s]
    assert sizes.count(1) == 2  # two polls of one record, each as dear as a larger one
    assert sizes[-2] == 256 and len(sizes) <= 20  # then back up, doubling, to batch_size


async def test_two_sources_take_turns_at_whole_slices():
    """Records cost 0.3 ms: 3 fill a slice but for its last 0.1 ms, too
    little for the other source's poll, which declines it and runs first in
    the next slice, with the whole budget: the sources alternate, slice by
    slice, until one has read everything."""
    clock = VirtualClock()
    flow = Dataflow("two sources")
    flow.trace = trace = []
    for label in ("a", "b"):
        flow.from_iterable(range(40), name=label).apply(
            lambda label=label: Costly(clock, trace, per_record=lambda x: 0.0003, name=label),
            name=f"costly {label}")
    await with_host(flow, clock)
    turns = [[name for name, _ in s] for s in slices(trace)]
    assert all(len(turn) == 1 for turn in turns)
    order = [turn[0] for turn in turns]
    assert sum(size for _, size in trace if _ == "a") == sum(size for _, size in trace if _ == "b") == 40
    both = min(len(order) - order[::-1].index(label) for label in "ab")  # until one is done
    assert len(order[:both]) > 10 and all(x != y for x, y in itertools.pairwise(order[:both]))


async def test_an_async_source_emits_what_the_kernel_wants_and_keeps_the_rest():
    """Its reader fills the buffer by up to batch_size records; the source
    hands on at most `records_wanted` of them per poll, in order."""
    clock = VirtualClock()

    async def numbers():
        for n in range(300):
            yield n

    flow = Dataflow("async paced")
    flow.trace = []
    out = flow.from_async_iterable(numbers, batch_size=100).apply(
        lambda: Costly(clock, flow.trace, per_record=lambda x: 0.0001), name="costly").collect()
    await with_host(flow, clock)
    assert out.items == list(range(300))
    sizes = [size for _, size in flow.trace if _ != HOST]
    assert sizes[0] <= 16 and max(sizes[1:]) <= 10 and sum(sizes) == 300


# -- a chain whose work outgrows the budget ---------------------------------------------------


class Expand(Operator):
    def __init__(self, factor):
        self.factor = factor

    def on_batch(self, port, batch):
        self.emit([x * self.factor + i for x in batch for i in range(self.factor)])


async def test_a_chain_whose_output_grows_hands_the_rest_to_a_later_slice():
    """One record per poll becomes 1,000, which the first stage takes the
    whole budget to handle: the second stage gets them in a later slice,
    after the host's turn, instead of in the same activation."""
    clock = VirtualClock()
    flow = Dataflow("growing")
    flow.trace = trace = []
    out = (flow.from_iterable(range(3), batch_size=1)
               .apply(lambda: Expand(1000), name="expand")
               .apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-6, name="first"), name="first")
               .apply(lambda: Costly(clock, trace, name="second"), name="second")
               .collect())
    await with_host(flow, clock)
    assert out.items == list(range(3000))
    assert slices(trace) == [[("first", 1000)], [("second", 1000), ("first", 1000)],
                             [("second", 1000), ("first", 1000)], [("second", 1000)]]


async def test_a_flat_maps_large_output_goes_on_in_pieces_that_fit_the_budget_with_the_host_between():
    """One record becomes 10,000 (a range): the flat_map hands them on in
    pieces, one a tick. Each record costs the next step 1 us, so a piece
    of 1,024 costs 1.024 ms, more than the whole budget: once two in a row
    have taken more than it (the first was handed on by the flat_map's
    handler, the fourth was made meanwhile), the pieces hold what fits in
    a quarter of the budget, 250 records, and a slice runs up to five of
    them (its last one started before the 1 ms were spent), the host
    after each slice. (They stayed 1,024, whatever they cost.)"""
    clock = VirtualClock()
    flow = Dataflow("pieces")
    flow.trace = trace = []
    out = (flow.from_iterable([10_000]).flat_map(range)
               .apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-6), name="costly").collect())
    await with_host(flow, clock)
    assert out.items == list(range(10_000))
    assert [size for _, size in trace if _ != HOST] == [1024] * 4 + [250] * 23 + [154]
    assert [len(entries) for entries in slices(trace)] == [1, 1, 1, 1, 5, 5, 5, 4, 4, 1]
    assert slice_times(trace) == pytest.approx([0.001024] * 4 + [0.00125] * 3 + [0.001, 0.001, 0.000154])


async def test_a_flat_maps_pieces_stay_whole_where_the_step_after_costs_as_much_per_batch():
    """The step after costs 2 ms a batch, whatever its size (a sink that
    flushes each batch): smaller pieces would cost as much each, so after
    two tries at fewer records the pieces go on whole again."""
    clock = VirtualClock()
    flow = Dataflow("flushes")
    flow.trace = trace = []
    out = (flow.from_iterable([10_000]).flat_map(range)
               .apply(lambda: Costly(clock, trace, per_batch=0.002), name="costly").collect())
    await with_host(flow, clock)
    assert out.items == list(range(10_000))
    sizes = [size for _, size in trace if _ != HOST]
    # twice fewer records that cost as much (128, then 16: each second piece of a size
    # was made before the first of it had gone on and told its cost), then whole
    assert sizes == [1024] * 4 + [128, 128, 16, 16] + [1024] * 5 + [496], sizes


@pytest.mark.parametrize("kind", ["tumbling", "sessions"])
async def test_a_window_closing_for_many_keys_makes_its_results_a_piece_a_slice(monkeypatch, kind):
    """One window (or session) per key for 10,000 keys, all closing at the
    end of input: the results are made, and go on, in pieces of 1,024, one
    a tick; each piece costs the next step 1.024 ms, more than the budget,
    so the host runs between any two pieces, and once two have gone on the
    pieces go on in parts of what fits in a quarter of it. (All 10,000 were made in one
    activation before; on the real clock, 300,000 keys held the loop ~100
    ms.) The first tick makes the piece after its own too (what shows there
    is more); sessions are closed 256 at a time as their results go on."""
    from operators import Session, Tumbling
    from operators.windows._aggregations import TopAggregation

    clock = VirtualClock()
    flow = Dataflow("closing")
    flow.trace = trace = []
    made = TopAggregation.result

    def traced(self, acc):  # each result made, as it is made
        trace.append(("made", 1))
        return made(self, acc)

    monkeypatch.setattr(TopAggregation, "result", traced)
    window = Tumbling(10.0) if kind == "tumbling" else Session(20.0)
    out = (flow.from_iterable([(key, 5.0) for key in range(10_000)], timestamp=lambda r: r[1])
               .key_by(lambda r: r[0]).window(window).top(1)
               .apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-6), name="costly").collect())
    await with_host(flow, clock)
    assert sorted(key for key, _, _ in out.items) == list(range(10_000))
    made_in = [sum(n for what, n in one if what == "made") for one in slices(trace)]
    assert sum(made_in) == 10_000
    assert made_in[0] <= 2048 and max(made_in[1:]) <= 1024, made_in
    costly = [n for one in slices(trace) for what, n in one if what == "costly"]
    if kind == "tumbling":
        # (each piece made of 1,024 goes on in parts of what fits in a quarter of the budget
        # once two in a row have taken more than it (1,024 each, three with the first)
        assert costly == [1024] * 3 + ([250] * 4 + [24]) * 6 + [250] * 3 + [34], costly
    else:  # sessions close 256 at a time (each costs ~2.5 us to close on the real clock)
        assert sum(costly) == 10_000 and max(costly) <= 256, costly


async def test_an_aggregates_results_for_many_keys_at_the_end_go_on_a_piece_a_slice():
    """A count of 10,000 keys ends: its results are handed on in pieces of
    1,024, one a tick, each costing the next step 1.024 ms, so the host
    runs between any two, and once two have gone on they go on in parts of
    what fits in a quarter of the budget (all ten batches left the count in one activation
    before: a million keys held the loop ~185 ms on the real clock)."""
    from operators import Count

    class Traced(Count):  # notes each batch the count hands on, as it does
        def on_end(self):
            emit = self.emit

            def traced(batch):
                trace.append(("emitted", len(batch)))
                emit(batch)

            self.emit = traced
            return super().on_end()

    clock = VirtualClock()
    flow = Dataflow("ending")
    flow.trace = trace = []
    out = (flow.from_iterable(range(10_000)).key_by(lambda r: r).apply(Traced, name="count")
               .apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-6), name="costly").collect())
    await with_host(flow, clock)
    assert sorted(out.items) == [(key, 1) for key in range(10_000)]
    emitted = [[n for what, n in one if what == "emitted"] for one in slices(trace)]
    # (each piece made of 1,024 goes on in parts of what fits in a quarter of the budget
    # once two in a row have taken more than it (1,024 each, three with the first); a slice then runs
    # parts till its 1 ms is spent)
    assert [n for one in emitted for n in one] == [1024] * 3 + ([250] * 4 + [24]) * 6 + [250] * 3 + [34]
    assert max(map(sum, emitted)) == 1024, emitted


async def test_a_joins_pairs_for_a_hot_key_go_on_a_piece_a_slice():
    """10,000 values of one key on the left, then one on the right: its
    10,000 pairs are made and handed on 4,096 at once, then 1,024 a tick,
    each piece costing the next step 1.024 ms, so the host runs between
    (all 10,000 were made in one activation before)."""
    from operators import KeyedJoin

    class Traced(KeyedJoin):  # notes each batch of pairs the join hands on, as it does
        def on_batch(self, port, batch):
            if not getattr(self, "traced", False):
                emit, self.traced = self.emit, True

                def traced(pairs):
                    trace.append(("emitted", len(pairs)))
                    emit(pairs)

                self.emit = traced
            return super().on_batch(port, batch)

    class Then(Source):  # the right side's one value, once the left's are all in
        def poll(self):
            if len(seen) < 10_000:
                return True
            self.emit([(0, "right")])
            return False

    clock = VirtualClock()
    flow = Dataflow("hot")
    flow.trace = trace = []
    seen: list = []
    left = flow.from_iterable([(0, i) for i in range(10_000)]).inspect(seen.append)
    right = flow.source(Then, name="then")
    out = (left.apply(Traced, inputs=(right,), name="join")
               .apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-6), name="costly").collect())
    await with_host(flow, clock)
    assert sorted(out.items) == [(0, (i, "right")) for i in range(10_000)]
    emitted = [[n for what, n in one if what == "emitted"] for one in slices(trace)]
    assert [n for one in emitted for n in one] == [1024] * 9 + [784]
    assert sum(emitted[0]) <= 4096 and max(sum(one) for one in emitted[1:]) <= 1024, emitted


async def test_a_loops_round_handed_on_at_once_goes_on_a_batch_a_slice_with_the_host_between():
    """A loop's head hands its round 0 (10,240 records in batches, as the
    source made them) on at once; each record costs the step after it
    1 us: the step takes batches only while the slice's budget lasts and
    the host runs between (it took all of them in one activation, holding
    the loop ~10 ms; 300,000 records, ~33 ms on the real clock)."""
    clock = VirtualClock()
    flow = Dataflow("round")
    flow.trace = trace = []

    def body(numbers):
        paid = numbers.apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-6), name="costly")
        return paid.filter(lambda x: False), paid

    out = flow.from_iterable(range(10_240), batch_size=1024).iterate(body).collect()
    await with_host(flow, clock)
    assert sorted(out.items) == list(range(10_240))
    handed = slices(trace)
    assert sum(n for one in handed for _, n in one) == 10_240
    assert len(handed) >= 10
    # a batch starts only while the slice's budget lasts (1 us a record)
    assert all(sum(n for _, n in one[:-1]) * 1e-6 < BUDGET for one in handed), handed


class Scripted(Source):
    """Emits batches and moves its watermark as `script` says, one list of
    steps per poll; a batch's records are numbered on from the last."""

    def __init__(self, script):
        self.script = list(script)
        self.next = 0

    def poll(self):
        if not self.script:
            return False
        for kind, value in self.script.pop(0):
            if kind == "batch":
                self.emit(list(range(self.next, self.next + value)))
                self.next += value
            else:
                self.advance_watermark(value)
        return bool(self.script)  # ends with its last step's poll


class Record(Operator):
    """Notes every batch and watermark, in the order they come."""

    def __init__(self, seen):
        self.seen = seen

    def on_batch(self, port, batch):
        self.seen.append(("batch", tuple(batch)))

    def on_watermark(self, watermark):
        self.seen.append(("watermark", watermark))

    def on_end(self):
        self.seen.append(("end",))


steps = st.one_of(st.tuples(st.just("batch"), st.integers(1, 120)),
                  st.tuples(st.just("watermark"), st.integers(1, 5)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(steps, min_size=1, max_size=3), max_size=20), st.sampled_from([1, 2, 40]),
       st.sampled_from([0.0, 2e-5, 1e-4]), st.sampled_from([0.0, 3e-4, 2e-3]))
def test_handing_work_on_keeps_every_batch_and_watermark_in_order(
        rising_watermarks, script, factor, per_record, per_batch):
    """The same flow with a budget no chain ever reaches (one activation
    each) and with 1 ms (chains handed on at every point, batches and
    watermarks of one poll alike): the last operator sees the same records
    and watermarks in the same order (the batches between two watermarks
    joined: a large emit's piece that costs more than the budget goes on
    in parts, `PieceSize`)."""
    steps = rising_watermarks(script)

    def seen_with(budget):
        clock, seen = VirtualClock(), []
        flow = Dataflow("order")
        flow.trace = []
        (flow.source(lambda: Scripted(steps), name="scripted")
             .apply(lambda: Costly(clock, flow.trace, per_record=lambda x: per_record,
                                   per_batch=per_batch), name="first")
             .apply(lambda: Expand(factor), name="expand")
             .apply(lambda: Costly(clock, flow.trace, per_record=lambda x: per_record), name="second")
             .apply(lambda: Record(seen), name="record"))
        asyncio.run(run_async(flow, clock=clock, budget=budget))
        joined: list = []
        for entry in seen:
            if entry[0] == "batch" and joined and joined[-1][0] == "batch":
                joined[-1] = ("batch", joined[-1][1] + entry[1])
            else:
                joined.append(entry)
        return joined

    assert seen_with(0.001) == seen_with(1e9)


class CostlyEnd(Operator):
    """Its on_end costs 0.8 ms (an aggregate emitting its results)."""

    def __init__(self, clock, trace):
        self.clock, self.trace = clock, trace

    def on_batch(self, port, batch):
        pass

    def on_end(self):
        self.trace.append(("end", 0))
        self.clock.advance(0.0008)


async def test_the_end_of_input_that_finds_the_budget_spent_waits_for_the_next_slice():
    """The last batch takes the whole budget: the end of input (and the
    final watermark) goes through the next operator's inbox like a batch
    would, so an aggregate's on_end runs in a slice of its own."""
    clock = VirtualClock()
    flow = Dataflow("end")
    flow.trace = trace = []
    (flow.source(lambda: Scripted([[("batch", 10)]]), name="scripted")
         .apply(lambda: Costly(clock, trace, per_record=lambda x: 0.0001), name="costly")
         .apply(lambda: CostlyEnd(clock, trace), name="aggregate"))
    await with_host(flow, clock)
    assert slices(trace) == [[("costly", 10)], [("end", 0)]]


async def test_a_source_waits_while_its_chain_has_work_handed_on():
    """The second stage's work is handed on at every poll: the source polls
    again only once that stage has caught up, so at most one poll's output
    waits in its inbox (the third stage's deferred batches never pile up)."""
    clock = VirtualClock()
    flow = Dataflow("backlog")
    flow.trace = trace = []
    (flow.from_iterable(range(6), batch_size=1)
         .apply(lambda: Expand(100), name="expand")
         .apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-5, name="first"), name="first")
         .apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-5, name="second"), name="second")
         .apply(lambda: Costly(clock, trace, name="third"), name="third")
         .collect())
    await run_async(flow, clock=clock)
    names = [name for name, _ in trace]
    assert names == ["first", "second", "third"] * 6


# -- the host's turns -----------------------------------------------------------------------


# -- the host's heap --------------------------------------------------------------------------


class Census(Operator):
    """Notes, once, how many objects a full collection would walk now."""

    def __init__(self, seen):
        self.seen = seen

    def on_batch(self, port, batch):
        if not self.seen:
            self.seen.append((len(gc.get_objects()), gc.get_freeze_count()))


async def test_a_run_keeps_the_hosts_heap_out_of_full_collections_and_gives_it_back():
    host_heap = [{"n": n} for n in range(50_000)]  # a host's long-lived objects
    seen: list = []
    flow = Dataflow("census")
    flow.from_iterable(range(10)).apply(lambda: Census(seen), name="census")
    tracked_before = len(gc.get_objects())
    await run_async(flow)
    (tracked_during, frozen_during), = seen
    assert tracked_during < 10_000 < len(host_heap) < tracked_before
    assert frozen_during >= len(host_heap)
    assert gc.get_freeze_count() <= INTERPRETER_FROZEN  # (3.12: its immortals)


async def test_overlapping_runs_share_one_freeze_undone_by_the_last():
    seen_a: list = []
    seen_b: list = []
    release = asyncio.Event()

    class Wait(Source):
        def open(self, context):
            self.waiting = None

        def poll(self):
            if release.is_set():
                return False
            if self.waiting is None:
                self.waiting = asyncio.ensure_future(release.wait())
                self.waiting.add_done_callback(lambda _: self.wake())
            return None

    first, second = Dataflow("a"), Dataflow("b")
    first.source(Wait, name="wait")
    second.from_iterable(range(3)).apply(lambda: Census(seen_b), name="census")
    running = asyncio.ensure_future(run_async(first))
    await asyncio.sleep(0)
    frozen = gc.get_freeze_count()
    await run_async(second)  # starts and ends inside the first
    seen_a.append(gc.get_freeze_count())
    release.set()
    await running
    # (frozen objects can only go, while nothing freezes anew)
    assert frozen > 0 and 0 < seen_b[0][1] <= frozen and 0 < seen_a[0] <= frozen
    assert gc.get_freeze_count() <= INTERPRETER_FROZEN  # (3.12: its immortals)


@pytest.mark.parametrize("host_choice", ["froze its heap", "disabled the collector"])
async def test_a_host_that_manages_its_collector_itself_is_left_alone(host_choice):
    seen: list = []
    flow = Dataflow("census")
    flow.from_iterable(range(3)).apply(lambda: Census(seen), name="census")
    if host_choice == "froze its heap":
        gc.freeze()
    else:
        gc.disable()
    try:
        before = gc.get_freeze_count()
        await run_async(flow)
        after = gc.get_freeze_count()
        # not frozen anew (frozen objects can only go), nor unfrozen
        assert seen[0][1] <= before and (after > 0) == (before > 0)
    finally:
        gc.unfreeze()
        gc.enable()


# -- on the real clock ------------------------------------------------------------------------


def word_key(word):
    return word


async def test_a_word_count_on_the_hosts_loop_gives_it_a_turn_every_budget_or_so():
    """The issue's case, smaller: a word count (flat_map(str.split) of
    13-word lines) on the caller's loop. Before the budget held, a source
    batch of 1,024 lines and the chain after it ran as one activation
    (13,000 words, ~10 ms or more here); now no host turn waits more than
    three budgets of this thread's CPU time (a measure the other processes
    of a loaded machine do not stretch; the collector's young collections
    and the final slice, the count's 1,000 results, included)."""
    rng = random.Random(7)
    words = [f"w{i}" for i in range(1_000)]
    lines = [" ".join(rng.choices(words, k=13)) for _ in range(30_000)]
    flow = Dataflow("wordcount")
    out = flow.from_iterable(lines).flat_map(str.split).key_by(word_key).count().collect()
    gaps: list[float] = []
    running = True

    async def host():
        last = time.thread_time()
        while running:
            await asyncio.sleep(0)
            now = time.thread_time()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(host())
    await asyncio.sleep(0)
    await run_async(flow)
    running = False
    await task
    assert sum(n for _, n in out.items) == 30_000 * 13
    # the run lasted many budgets (so the bound below means something) and
    # the host had its turns all along: on a fast machine ~45 turns, ~60 ms
    # (a count of turns alone, > 50, failed there as the run got shorter)
    assert sum(gaps) > 10 * BUDGET and len(gaps) > 10, (len(gaps), sum(gaps))
    assert max(gaps) <= 3 * BUDGET, sorted(gaps)[-5:]


async def test_a_source_no_slice_leaves_room_for_still_goes_on():
    """A poll that would not fit in what is left of a slice is declined
    once, to run first in the next; when that slice has no room either (a
    budget of a nanosecond here; in a run, other work first in every
    slice), the source goes on a record at a time rather than declining
    for ever (it did: this run never ended)."""
    flow = Dataflow("tiny budget")
    out = flow.from_iterable(range(300)).map(lambda n: n * 2).collect()
    await asyncio.wait_for(run_async(flow, budget=1e-9), timeout=30)
    assert out.items == [n * 2 for n in range(300)]
