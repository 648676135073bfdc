"""Review of the kernel embedded in an application (session 35): what a
demanding application developer meets. Each test here failed on the code
as reviewed."""

from __future__ import annotations

import logging

import pytest

from kernel import Dataflow, Operator, VirtualClock, run


def test_a_stall_of_a_map_chained_after_its_source_names_the_map_not_only_the_source(caplog):
    # A map that blocked (1 s on a lock, a socket) runs inside its source's
    # activation (chained on a forward edge): the stall notice said only
    # "stall: from_iterable (step 0) ran 1000.2 ms without yielding", and
    # the developer looked for the fault in the source. It names the steps
    # chained in the activation too; its `step` stays the activation's.
    clock = VirtualClock()

    def blocks_at_3(x):
        if x == 3:
            clock.advance(1.0)  # (the virtual clock: a second of "work", exact and instant)
        return x * 2

    flow = Dataflow("stalling")
    doubled = flow.from_iterable(range(10)).map(blocks_at_3, name="lookup").collect()
    with caplog.at_level(logging.WARNING, logger="kernel"):
        run(flow, clock=clock)
    assert doubled.items == [x * 2 for x in range(10)]
    stalls = [r for r in caplog.records if "stall:" in r.getMessage()]
    assert [r.getMessage() for r in stalls] == [
        "[kernel 0] stall: from_iterable (step 0), with lookup (step 1) and collect (step 2) chained in its "
        "activation, ran 1000.0 ms without yielding (threshold 25.0 ms); the event loop and every other "
        "operator waited"]
    assert stalls[0].step == "from_iterable (step 0)"


def test_a_stall_of_a_step_with_nothing_chained_after_it_is_named_as_before(caplog):
    clock = VirtualClock()

    def slow(x):
        clock.advance(0.03)
        return x

    flow = Dataflow("fan")
    source = flow.from_iterable([1], batch_size=1)
    slowed = source.map(slow, name="slow")  # (two outputs each: nothing chained after either)
    outputs = [slowed.collect(), slowed.collect(), source.collect()]
    with caplog.at_level(logging.WARNING, logger="kernel"):
        run(flow, clock=clock)
    assert [o.items for o in outputs] == [[1], [1], [1]]
    stalls = [r.getMessage() for r in caplog.records if "stall:" in r.getMessage()]
    assert stalls == ["[kernel 0] stall: slow (step 1) ran 30.0 ms without yielding (threshold 25.0 ms); "
                      "the event loop and every other operator waited"]


async def _turn_gaps(flow, clock) -> list[float]:
    """Runs `flow` on this loop beside an application's task; the virtual
    seconds between two of the task's turns."""
    import asyncio

    from kernel import run_async

    gaps: list[float] = []
    running = True

    async def application():
        last = clock.monotonic()
        while running:
            await asyncio.sleep(0)
            now = clock.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(application())
    try:
        await run_async(flow, clock=clock)
    finally:
        running = False
        await task
    return gaps


async def test_a_costly_map_after_a_flat_map_hands_the_loop_back_within_the_budget():
    # An application's other tasks waited 30-60 ms at a time while a
    # flat_map made 3,000 records of each record and a map after it cost
    # 30 us a record (a parse, a lookup): the flat_map's pieces were 1,024
    # records whatever the steps after them cost, and the map, fused into
    # them, ran 1,024 records (two pieces, 61 ms, in the first activation)
    # at a time. The pieces now hold what fits in the budget once the
    # first have told what a record costs.
    clock = VirtualClock()

    def parse(x):
        clock.advance(0.00003)  # (the virtual clock: 30 us of "work" a record, exact and instant)
        return x + 1

    flow = Dataflow("exploding")
    parsed = flow.from_iterable(range(6), batch_size=1).flat_map(lambda x: range(x * 3000, x * 3000 + 3000)) \
        .map(parse, name="parse").collect()
    gaps = await _turn_gaps(flow, clock)
    assert parsed.items == [x + 1 for x in range(18_000)]
    # over 1.25 ms (the 1 ms budget, and a piece of a quarter of it that
    # began before it was spent): only while what a record costs is learnt
    # (two pieces over the budget in a row), the first activation (two
    # pieces of 1,024 records) and the step after it (was: every one of
    # the 14 turns)
    assert [round(gap * 1e3, 2) for gap in gaps if gap > 0.00125 + 1e-9] == [61.44, 28.56], sorted(gaps)[-5:]
    assert sorted(gaps)[-3] == pytest.approx(0.0012)


@pytest.mark.parametrize("how", ["count", "operator", "source"])
async def test_a_costly_map_after_an_output_of_many_records_at_the_end_hands_the_loop_back_within_the_budget(
        how):
    # A count's results for 20,000 keys at the end of input (or a user's
    # operator emitting 20,000 records in on_end, or a source in one poll)
    # go on 1,024 records a tick, and a map after them of 30 us a record
    # held the loop 30 ms a piece, all 20 of them. The pieces go on in
    # parts that fit the budget once two in a row have taken more than it
    # (the first one is handed on by the handler or the poll itself).
    from kernel import Operator, Source

    clock = VirtualClock()

    def lookup(pair):
        clock.advance(0.00003)
        return pair

    class AllAtTheEnd(Operator):
        def open(self, context):
            self.seen = []

        def on_batch(self, port, batch):
            self.seen.extend(batch)

        def on_end(self):
            self.emit([(x, 1) for x in self.seen])

    class AllAtOnce(Source):
        def open(self, context):
            self.done = False

        def poll(self):
            if not self.done:
                self.emit([(x, 1) for x in range(20_000)])
                self.done = True
                return True
            return False

    flow = Dataflow("ending")
    if how == "source":
        ended = flow.source(AllAtOnce, name="all at once")
    else:
        source = flow.from_iterable(range(20_000))
        ended = source.key_by(lambda x: x).count() if how == "count" else source.apply(AllAtTheEnd)
    looked_up = ended.map(lookup, name="lookup").collect()
    gaps = await _turn_gaps(flow, clock)
    assert sorted(looked_up.items) == [(x, 1) for x in range(20_000)]
    assert [round(gap * 1e3, 2) for gap in gaps if gap > 0.0015] == [30.72] * 3, sorted(gaps)[-5:]
    assert sorted(gaps)[-4] <= 0.00125 + 1e-9, sorted(gaps)[-5:]


class _BatchSizes(Operator):
    """Passes its batches on, noting each one's size."""

    def __init__(self, sizes: list) -> None:
        self.sizes = sizes

    def on_batch(self, port, batch):
        self.sizes.append(len(batch))
        self.emit(batch)


def _first(record):
    return record[0]


def test_cheap_pieces_larger_than_a_piece_go_on_whole():
    # A hot key's join makes pieces of a few records' partners each, past
    # PIECE (11 x 100 = 1,100 pairs here): cheap to hand on, they went whole. Timed
    # pieces (PieceSize) were cut at PIECE whatever they cost, 1,024 + 176,
    # each piece two activations (benches/large_outputs.py's incremental
    # join: 449 activations of the join instead of 230). Cut only once
    # pieces cost more than the budget (the tests above).
    lefts = [(0, i) for i in range(100)]
    rights = [(0, i) for i in range(300)]
    sizes: list = []
    flow = Dataflow("hot join")
    joined = flow.from_iterable(lefts).key_by(_first).join(flow.from_iterable(rights).key_by(_first))
    out = joined.apply(lambda: _BatchSizes(sizes)).collect()
    run(flow, clock=VirtualClock())  # (no time passes: nothing costs more than the budget)
    assert sorted(out.items) == sorted((0, (lv, rv)) for lv in lefts for rv in rights)
    assert sum(sizes) == len(lefts) * len(rights)
    # (past the join's first output, handed on in EMIT_BATCH lists: pieces of
    # 11 rights' partners, 1,100 pairs, which were cut into 1,024 and 76)
    assert 1100 in sizes and 76 not in sizes, sizes
