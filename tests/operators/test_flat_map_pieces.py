"""A flat_map whose function makes many records from one hands them on in
pieces, a piece a tick, so that the kernel still hands the loop back within
its budget: exact output against a plain loop, the host's turns while it is
in flight, batches, watermarks and the end of input in their order (small
pieces patched in, so that a few records exercise every way through), and
errors that still name the step, the function and the record."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import operators._stateless as stateless
from kernel import Dataflow, Operator, OperatorError, Source, TimedBatch, run, run_async
from operators import Tumbling, Window

MILLIONS = 3_000_000


class Tally(Operator):
    """Keeps what it is given, and counts it where the test can read it as
    the run goes."""

    def __init__(self, seen: list):
        self.seen = seen

    def on_batch(self, port, batch):
        self.seen.extend(batch)


@pytest.mark.parametrize("fused", [False, True], ids=["apart", "fused between two maps"])
async def test_millions_of_records_from_one_go_on_while_the_host_runs(fused):
    # flat_map(lambda n: range(3_000_000)) on one record ran as one activation: the
    # event loop stalled for the whole of it (0.13-1.1 s), and a task sharing the loop
    # never ran while the records were on their way.
    flow = Dataflow()
    stream = flow.from_iterable([MILLIONS])
    if fused:
        stream = stream.map(lambda n: n, name="before")
    stream = stream.flat_map(lambda n: range(n), name="explode")
    if fused:
        stream = stream.map(lambda n: n, name="after")
    seen: list = []
    stream.apply(lambda: Tally(seen), name="tally")
    turns: list[tuple[float, int]] = []  # (the host's turn, records through by then)
    running = True

    async def host():
        while running:
            turns.append((time.perf_counter(), len(seen)))
            await asyncio.sleep(0)

    task = asyncio.create_task(host())
    await asyncio.sleep(0)
    try:
        await run_async(flow)
    finally:
        running = False
        await task
    assert seen == list(range(MILLIONS))  # every record, in order
    in_flight = [(at, before) for (at, before), (_, through) in itertools.pairwise(turns)
                 if 0 < through < MILLIONS]
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(in_flight)]
    # one piece (1,024 records) a tick, the loop handed back every 1 ms budget: ~100-350
    # host turns while the records went through, ~1 ms apart
    assert len(in_flight) >= 50, len(in_flight)
    assert statistics.median(gaps) < 0.01, sorted(gaps)[-5:]


# -- small pieces: every way through, against a plain loop ------------------------------------


class Scripted(Source):
    """Emits, per poll, a batch of its records with their times (a
    TimedBatch) or moves its watermark, as `script` says."""

    def __init__(self, script):
        self.script = list(script)

    def poll(self):
        if not self.script:
            return False
        for kind, value in self.script.pop(0):
            if kind == "batch":
                self.emit(TimedBatch(list(value), [float(r) for r in value]))
            else:
                self.advance_watermark(value)
        return bool(self.script)


class Record(Operator):
    """Notes every record (with its time), watermark and the end, in order."""

    def __init__(self, seen):
        self.seen = seen

    def on_batch(self, port, batch):
        self.seen.extend(("record", r, t) for r, t in zip(batch, batch.timestamps))

    def on_watermark(self, watermark):
        self.seen.append(("watermark", watermark))

    def on_end(self):
        self.seen.append(("end",))


def results(r):
    """What the flat_map makes of record `r`: r % 50 records, made lazily
    (a range), made already (a list) or by a generator."""
    size = r % 50
    if r % 3 == 0:
        return range(r, r + size)
    if r % 3 == 1:
        return [r] * size
    return (r + i for i in range(size))


def expected(script, chain: str) -> list:
    seen = []
    for poll in script:
        for kind, value in poll:
            if kind == "watermark":
                seen.append(("watermark", float(value)))
                continue
            for r in value:
                for x in results(r):
                    if chain == "apart":
                        seen.append(("record", x, float(r)))
                    elif x % 7:  # fused: map(+1) -> flat_map -> filter(% 7) -> flat_map(x, -x)
                        seen.extend(("record", y, float(r)) for y in (x, -x))
    seen.append(("watermark", float("inf")))
    seen.append(("end",))
    return seen


def flow_of(script, chain: str, seen: list) -> Dataflow:
    flow = Dataflow()
    stream = flow.source(lambda: Scripted(script), name="scripted")
    if chain == "apart":
        stream = stream.flat_map(results, name="results")
    else:
        stream = (stream.map(lambda r: r + 1, name="plus one").flat_map(lambda r: results(r - 1))
                  .filter(lambda x: x % 7, name="sevens").flat_map(lambda x: (x, -x), name="both"))
    stream.apply(lambda: Record(seen), name="record")
    return flow


records = st.lists(st.integers(0, 200), min_size=1, max_size=12)
polls = st.lists(st.lists(st.one_of(st.tuples(st.just("batch"), records),
                                    st.tuples(st.just("watermark"), st.integers(1, 3))),
                          min_size=1, max_size=3), min_size=1, max_size=8)


@settings(max_examples=80, deadline=None)
@given(polls, st.sampled_from(["apart", "fused"]), st.sampled_from([1, 3]), st.integers(4, 40))
def test_in_pieces_records_times_watermarks_and_the_end_keep_their_order(
        rising_watermarks, script, chain, piece, large):
    """Pieces of 1 or 3 records, a batch's output in pieces past `large`
    records, results read piecewise after a batch of more than 2 on average:
    every record with its time, and each watermark after the records before
    it, as a plain loop makes them."""
    steps = rising_watermarks(script)
    seen: list = []
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("PIECE", piece), ("LARGE", large), ("CHUNK", 2), ("WIDE", 2)):
            patch.setattr(stateless, name, value)
        run(flow_of(steps, chain, seen))
    assert seen == expected(steps, chain)


def test_a_first_batch_that_makes_no_records_still_carries_its_times_to_a_window():
    """The first batch, read piecewise, makes nothing: the window that
    takes the key_by and map_values after the flat_map is still given a
    TimedBatch (a plain empty list failed: "windows need event time")."""
    flow = Dataflow()
    sums = (flow.from_iterable([0, 2, 1, 3], timestamp=float, batch_size=2)
            .flat_map(lambda n: [n] * (n % 2)).key_by(lambda n: n % 2).map_values(lambda n: n)
            .window(Tumbling(10.0)).sum().collect())
    run(flow)
    assert sums.items == [(1, Window(0.0, 10.0), 4)]


def test_the_step_alone_gives_its_whole_output_at_once(monkeypatch):
    """`transform` (the step alone, as a fused chain's Stage holds it): the
    pieces joined, each record at its input's time."""
    monkeypatch.setattr(stateless, "PIECE", 2)
    step = stateless.FlatMap(results)
    step.name = "results"
    out = step.transform(TimedBatch([4, 6, 0], [1.0, 2.0, 3.0]))
    assert out.__class__ is TimedBatch
    assert list(out) == [*results(4), *results(6)] and out.timestamps == [1.0] * 4 + [2.0] * 6
    assert step.transform([7, 8]) == [*results(7), *results(8)]


# -- errors --------------------------------------------------------------------------------------


def explode(n):
    """n records, then, for 100,000 or more, a failure."""
    yield from range(n)
    if n >= 100_000:
        raise ValueError(f"gave out after {n}")


@pytest.mark.parametrize("fused", [False, True], ids=["apart", "fused"])
@pytest.mark.parametrize("records", [[100_000], [5] * 2000 + [100_000]],
                         ids=["read piecewise", "read whole"])
def test_a_result_that_fails_while_read_names_the_step_function_and_record(fused, records):
    """The first batch's results are read piecewise, a piece a tick
    (nothing is known of the function yet): the failure comes after 97
    pieces went on. After batches of narrow results (5 records each) they
    are read whole, as before."""
    flow = Dataflow()
    stream = flow.from_iterable(records)
    if fused:
        stream = stream.map(lambda n: n, name="before")
    seen: list = []
    stream.flat_map(explode).apply(lambda: Tally(seen), name="tally")
    with pytest.raises(OperatorError) as info:
        run(flow)
    step = "flat_map(explode) (step 2)" if fused else "flat_map(explode) (step 1)"
    assert str(info.value) == (f"operator '{step}': function '{__name__}.explode' raised ValueError: gave "
                               "out after 100000\n  on record: 100000")
    whole = [r for n in records for r in range(n)]
    assert seen == whole[:len(seen)]  # what went on before, in order
    if len(records) == 1:  # 97 pieces went on (the last may still wait in the next step's inbox)
        assert len(seen) >= 96 * 1024


# -- metrics ----------------------------------------------------------------------------------------


def test_with_metrics_the_records_of_later_pieces_are_counted_at_every_step(metered_runtime):
    """A run that counts records per step: a flat_map fused with the key_by
    and count after it (whose records never make a batch of their own), and
    one apart before a filter, each making 70,002 records from two, the
    first batch's in 69 pieces: every step's counts are the whole output's,
    not its first piece's."""
    flow = Dataflow("counted")
    numbers = flow.from_iterable([70_000, 2], name="numbers")
    numbers.flat_map(range, name="a").key_by(lambda n: n % 2, name="b").count(name="c").collect()
    numbers.flat_map(range, name="d").filter(lambda n: n % 3, name="e").collect()

    runtime = metered_runtime(flow)
    step = {i: i.name.split(" (")[0] for i in runtime.instances}
    assert {step[i]: step.get(i.fused_into) for i in runtime.instances if step[i] in "abd"} == {
        "a": "b", "b": "c", "d": None}
    made = 70_000 + 2
    thirds = len([n for n in [*range(70_000), *range(2)] if n % 3])
    assert {step[i]: (i.records_in, i.records_out) for i in runtime.instances if step[i] in "abcde"} == {
        "a": (2, made), "b": (made, made), "c": (made, 2), "d": (2, made), "e": (made, thirds)}


# -- epochs ---------------------------------------------------------------------------------------

SIZES = [200_000, 3, 150_000, 5, 100_000, 7]


class Numbers(Source):
    """Emits SIZES one a poll; its snapshot is its position."""

    def __init__(self, trace):
        self.trace = trace

    def open(self, context):
        self.at = 0

    def poll(self):
        if self.at == len(SIZES):
            return False
        self.emit([SIZES[self.at]])
        self.at += 1
        return True

    def on_epoch(self, epoch):
        self.trace.append(("source", epoch, self.at))
        return self.at


class Count(Operator):
    """Counts its records; its snapshot is the count."""

    def __init__(self, trace):
        self.trace = trace

    def open(self, context):
        self.seen = 0

    def on_batch(self, port, batch):
        self.seen += len(batch)

    def on_epoch(self, epoch):
        self.trace.append(("count", epoch, self.seen))
        return self.seen


def test_an_epochs_snapshot_holds_every_piece_of_the_records_before_its_marker(tmp_path):
    """Epochs every 2 ms while each large record's output goes on, a piece
    a tick: the count after the flat_map snapshots, for each epoch, exactly
    the output of the records its source had read (no marker passes a piece
    still to come, and none waits for a record read after it)."""
    trace: list = []
    flow = Dataflow("epochs")
    (flow.source(lambda: Numbers(trace), name="numbers").flat_map(range)
         .apply(lambda: Count(trace), name="count"))
    run(flow, state_dir=tmp_path, epoch_interval=0.002)
    read = {epoch: at for kind, epoch, at in trace if kind == "source"}
    counted = {epoch: seen for kind, epoch, seen in trace if kind == "count"}
    assert read and counted.keys() == read.keys()
    assert {epoch: sum(SIZES[:at]) for epoch, at in read.items()} == counted
    assert any(0 < at < len(SIZES) for at in read.values())  # an epoch while the output went on


# -- what waits behind ------------------------------------------------------------------------------


class Polls(Source):
    """Emits 200,000, then 1 at every later poll (40 polls), noting at each
    poll how many records the tally after the flat_map had by then."""

    def __init__(self, seen, polled):
        self.seen, self.polled = seen, polled

    def poll(self):
        self.polled.append(len(self.seen))
        self.emit([200_000] if len(self.polled) == 1 else [1])
        return len(self.polled) < 40


def test_the_kernels_sources_wait_while_a_batchs_pieces_go_on():
    """Behind a union (its own inbox, polled every tick, not chained to the
    flat_map) the source would be polled on at every tick while the 196
    pieces go on, its batches piling up behind them: it waits instead."""
    seen: list = []
    polled: list = []
    flow = Dataflow()
    (flow.source(lambda: Polls(seen, polled), name="polls").union(flow.from_iterable([]))
         .flat_map(range).apply(lambda: Tally(seen), name="tally"))
    run(flow)
    assert seen == [*range(200_000), *[0] * 39]
    assert [at for at in polled if 0 < at < 200_000] == []


def test_on_two_kernels_pieces_after_the_exchange_and_before_it_give_a_plain_loops_result():
    """A flat_map after an exchange (its kernel stops reading the other's
    records while its pieces go on) and one before an exchange (its pieces
    cross to the kernel that owns their key)."""
    records = [300_000, 5, 200_000, 7, 3]
    made = [n for r in records for n in range(r)]
    flow = Dataflow()
    after = flow.from_iterable(records).key_by(lambda n: n % 2).map(lambda pair: pair[1]).flat_map(range)
    spread = after.collect()
    counts = flow.from_iterable(records).flat_map(range).key_by(lambda n: n % 7).count().collect()
    run(flow, cores=2)
    assert sorted(spread.items) == sorted(made)
    assert sorted(counts.items) == sorted(Counter(n % 7 for n in made).items())
