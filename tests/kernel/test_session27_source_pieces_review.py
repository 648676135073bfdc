"""Review of two leftovers of large outputs handed on in pieces
(kernel/runtime/_user_pieces.py):

* a user's `Source` whose poll ignores `records_wanted` and emits a huge
  list went downstream whole, in one activation, the host's loop held all
  the while: it now goes on a piece a tick, as a user operator's large
  emit does, with what the poll did after it (emits, watermarks, the end)
  and the epoch markers injected meanwhile behind the pieces, and each
  epoch's snapshot consistent with the records before its marker (a
  resumed run counts every record once);
* an error met while a later piece of an `on_watermark`'s or `on_end`'s
  output goes on named the handler `on_batch`.

Each test compares against a plain-Python reference: the source's own
record of what it emitted, cut by the documented rule."""

from __future__ import annotations

import asyncio
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget import Costly, slices, with_host

import kernel.runtime._instance as instance_module
import kernel.runtime._user_pieces as user_pieces
from kernel import Dataflow, Operator, OperatorError, Source, VirtualClock, run, run_async

_INF = float("inf")


class Burst(Source):
    """One poll: emits `n` records in one list (whatever `records_wanted`
    says), then `after` more in a second emit, then ends."""

    def __init__(self, n: int, after: int = 0) -> None:
        self.n, self.after = n, after

    def poll(self):
        self.emit(list(range(self.n)))
        if self.after:
            self.emit(list(range(self.n, self.n + self.after)))
        return False


class Batches(Operator):
    """Notes the size of every batch it is given, and passes it on."""

    def __init__(self, sizes) -> None:
        self.sizes = sizes

    def on_batch(self, port, batch):
        self.sizes.append(len(batch))
        self.emit(batch)


# -- 1. a source's large emit, in pieces ------------------------------------------------------


@pytest.mark.parametrize("after", [0, 5])
async def test_a_sources_large_emit_goes_on_a_piece_a_slice_with_the_host_between(after):
    """A poll emits 10,000 records in one list (then `after` more): the step
    after it gets them 1,024 a tick, each piece costing it 1.024 ms (over
    the 1 ms budget), so the host runs between any two; once two in a row
    have taken more than the budget, in parts of what fits in a quarter
    of it (`PieceSize`), a slice running parts till its 1 ms is spent.
    They all went on in one activation: one slice of 10,000 (and the 5)."""
    clock = VirtualClock()
    flow = Dataflow("burst")
    flow.trace = trace = []
    out = (flow.source(lambda: Burst(10_000, after), name="burst")
               .apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-6), name="costly").collect())
    await with_host(flow, clock)
    assert out.items == list(range(10_000 + after))
    sizes = [[n for _, n in one] for one in slices(trace)]
    # (each piece of 1,024 in parts of 250 once two pieces in a row took over the budget; the 5
    # after them in the last slice, which has room)
    handed = [n for one in sizes for n in one]
    assert handed == [1024] * 3 + ([250] * 4 + [24]) * 6 + [250] * 3 + [34] + ([after] if after else [])
    assert sizes[:3] == [[1024]] * 3 and max(map(sum, sizes)) == 1024, sizes


def test_a_million_records_in_one_poll_arrive_once_in_order_in_pieces():
    """The brief's case: a million records in one list from one poll. The
    step after sees them all, in order, in batches of at most 1,024 (it
    was given one batch of 1,000,000)."""
    sizes: list = []
    flow = Dataflow("million")
    out = (flow.source(lambda: Burst(1_000_000), name="million")
               .apply(lambda: Batches(sizes), name="batches").collect())
    run(flow)
    assert out.items == list(range(1_000_000))
    assert max(sizes) <= 1024 and sum(sizes) == 1_000_000


class Woken(Source):
    """Its first poll starts a task and sleeps (None); the task emits
    10,000 records in one list and wakes it; its second poll emits 3 more
    and ends."""

    def poll(self):
        if not hasattr(self, "task"):
            self.task = self.context.kernel.spawn(self._fill())
            return None
        self.emit(["last", "two", "three"])
        return False

    async def _fill(self):
        await asyncio.sleep(0)
        self.emit(list(range(10_000)))
        self.wake()


def test_a_large_emit_from_a_sources_own_task_goes_on_in_pieces_and_the_source_is_polled_after():
    """Emitted by a task of the source's own (not in a poll), the list
    goes on in pieces too; the wake that came with it polls the source
    once they have gone on (nothing lost, nothing hangs)."""
    sizes: list = []
    flow = Dataflow("woken")
    out = flow.source(Woken, name="woken").apply(lambda: Batches(sizes), name="batches").collect()
    run(flow)
    assert out.items == [*range(10_000), "last", "two", "three"]
    assert sizes == [1024] * 9 + [784, 3]


class Script(Source):
    """Each poll emits lists of the sizes its script says (numbering the
    records 0, 1, 2...), then moves the watermark if the script says so.
    It notes, as the reference, every batch the steps after must see, cut
    by the documented rule (a plain list of more than max(LARGE_OUTPUT,
    records_wanted) records: its first PIECE now, the rest and every emit
    of the poll after it in PIECEs), the watermarks that advance, and its
    position (records emitted) at each epoch."""

    def __init__(self, polls, expected, positions) -> None:
        self.polls, self.expected, self.positions = list(polls), expected, positions
        self.next = 0
        self.top = -_INF

    def poll(self):
        if not self.polls:
            self.expected.append(("watermark", _INF))
            return False
        sizes, watermark = self.polls.pop(0)
        piece, large = user_pieces.PIECE, user_pieces.LARGE_OUTPUT
        limit = max(large, self.records_wanted)
        cut = False
        for size in sizes:
            records = list(range(self.next, self.next + size))
            self.next += size
            if not cut and size > limit:
                cut = True
            pieces = [records[at:at + piece] for at in range(0, size, piece)] if cut else [records]
            self.expected.extend(("batch", p) for p in pieces if p)
            self.emit(records)
        if watermark is not None:
            if watermark > self.top:
                self.top = watermark
                self.expected.append(("watermark", watermark))
            self.advance_watermark(watermark)
        if not self.polls:
            self.expected.append(("watermark", _INF))
            return False
        return True

    def on_epoch(self, epoch):
        self.positions[epoch] = self.next
        return self.next


class Seen(Operator):
    """Notes each batch, watermark and the end in order, and at each epoch
    how many records it had been given; each record costs `per_record`
    seconds of the virtual clock. (It emits nothing: a step that passed
    its batches on would cut them in pieces too, with the sizes patched.)"""

    def __init__(self, seen, counts, clock, per_record) -> None:
        self.seen, self.counts, self.clock, self.per_record = seen, counts, clock, per_record
        self.records = 0

    def on_batch(self, port, batch):
        self.clock.advance(self.per_record * len(batch))
        self.seen.append(("batch", list(batch)))
        self.records += len(batch)

    def on_watermark(self, watermark):
        self.seen.append(("watermark", watermark))

    def on_end(self):
        self.seen.append(("end",))

    def on_epoch(self, epoch):
        self.counts[epoch] = self.records
        return self.records


polls = st.lists(st.tuples(st.lists(st.integers(0, 30), max_size=5),
                           st.one_of(st.none(), st.floats(0, 100, allow_nan=False))), max_size=6)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=polls, fan_out=st.booleans(), per_record=st.sampled_from([0.0, 1e-5, 2e-4]),
       epoch_interval=st.sampled_from([None, 0.0001, 0.0003, 0.002]))
def test_a_sources_pieces_keep_order_with_its_watermarks_epochs_and_end(
        monkeypatch, script, fan_out, per_record, epoch_interval):
    """With pieces of 2 past 2 records (and the first poll asked for 2),
    the steps after the source (chained, or a fan-out's inboxes) see
    exactly the batches the rule cuts, in the order emitted, each watermark
    after the records emitted before it, the end last; with epochs at
    arbitrary points of the virtual clock, each epoch's snapshot after the
    source holds exactly the records the source had emitted when it took
    its own (no marker overtakes a piece; none waits for a later poll)."""
    monkeypatch.setattr(user_pieces, "LARGE_OUTPUT", 2)
    monkeypatch.setattr(user_pieces, "PIECE", 2)
    monkeypatch.setattr(instance_module._Pace, "FIRST", 2)
    clock = VirtualClock()
    expected, positions, seen, seen_too, counts, counts_too = [], {}, [], [], {}, {}
    flow = Dataflow("script")
    made = flow.source(lambda: Script(script, expected, positions), name="script")
    made.apply(lambda: Seen(seen, counts, clock, per_record), name="seen")
    if fan_out:
        made.apply(lambda: Seen(seen_too, counts_too, clock, per_record), name="seen too")
    with tempfile.TemporaryDirectory() as state:
        options = {} if epoch_interval is None else {"state_dir": state, "epoch_interval": epoch_interval}
        asyncio.run(run_async(flow, clock=clock, **options))
    assert seen == [*expected, ("end",)]
    if fan_out:
        assert seen_too == seen
    assert counts == {epoch: at for epoch, at in positions.items() if epoch in counts}
    assert counts.keys() == positions.keys()
    if fan_out:
        assert counts_too == counts


class Trickle(Source):
    """Its first poll emits 20,000 records in one list and starts a task
    that emits one record a turn of the loop, 40 times, then wakes it; its
    second poll ends. Its snapshot is its position (records emitted)."""

    def __init__(self, positions) -> None:
        self.positions = positions
        self.next = 0

    def poll(self):
        if self.next == 0:
            self._emit(20_000)
            self.context.kernel.spawn(self._trickle())
            return None
        return False

    def _emit(self, n):
        self.emit(list(range(self.next, self.next + n)))
        self.next += n

    async def _trickle(self):
        for _ in range(40):
            await asyncio.sleep(0)
            self._emit(1)
        self.wake()

    def on_epoch(self, epoch):
        self.positions[epoch] = self.next
        return self.next


async def test_an_epoch_during_a_sources_pieces_snapshots_what_was_emitted_before_its_marker():
    """Epochs start while the 20,000 records go on in pieces and the
    source's task keeps emitting behind them: each epoch's snapshot after
    the source holds exactly the records the source had emitted when the
    epoch started (its snapshot's position), not those its task emitted
    after the marker, nor fewer."""
    clock = VirtualClock()
    positions: dict = {}
    counts: dict = {}
    seen: list = []
    flow = Dataflow("trickle")
    flow.source(lambda: Trickle(positions), name="trickle").apply(
        lambda: Seen(seen, counts, clock, 1e-6), name="seen")
    with tempfile.TemporaryDirectory() as state:
        await run_async(flow, clock=clock, state_dir=state, epoch_interval=0.003)
    assert [r for kind, *batch in seen if kind == "batch" for r in batch[0]] == list(range(20_040))
    assert max(len(batch[0]) for kind, *batch in seen if kind == "batch") == 1024  # in pieces
    assert counts == positions and any(0 < at < 20_040 for at in positions.values()), (counts, positions)


class Failing(Source):
    """Emits `size` records a poll, `polls` polls; its snapshot is its
    position. In a run given `fail_at`, the poll of that number fails."""

    def __init__(self, size, polls, fail_at=None) -> None:
        self.size, self.polls, self.fail_at = size, polls, fail_at
        self.at = 0

    def poll(self):
        if self.at == self.fail_at:
            raise RuntimeError("crashed")
        self.emit([(self.at, i) for i in range(self.size)])
        self.at += 1
        return self.at < self.polls

    def on_epoch(self, epoch):
        return self.at

    def restore(self, snapshot):
        self.at = snapshot


class Tally(Operator):
    """How many times each record came, snapshotted; emits the tally at the
    end; notes the largest batch it was given."""

    def __init__(self, clock, largest) -> None:
        self.clock, self.largest = clock, largest
        self.tally: dict = {}

    def on_batch(self, port, batch):
        self.clock.advance(1e-6 * len(batch))
        self.largest.append(len(batch))
        for record in batch:
            self.tally[record] = self.tally.get(record, 0) + 1

    def on_end(self):
        self.emit(sorted(self.tally.items()))

    def on_epoch(self, epoch):
        return dict(self.tally)

    def restore(self, snapshot):
        self.tally = dict(snapshot)


def test_a_run_resumed_after_a_crash_during_a_sources_pieces_counts_every_record_once(tmp_path):
    """Five polls of 6,000 records each (in pieces), epochs every 2 ms of
    the virtual clock (a piece costs ~1 ms), the run fails at the fifth
    poll; resumed from its state_dir, every record is counted exactly once
    (the source's snapshot is never past records still to go on in pieces,
    nor before records its marker's snapshots hold)."""

    def flow_with(fail_at, largest):
        clock = VirtualClock()
        flow = Dataflow("resumed")
        out = (flow.source(lambda: Failing(6_000, 5, fail_at), name="failing")
                   .apply(lambda: Tally(clock, largest), name="tally").collect())
        return flow, clock, out

    largest: list = []
    flow, clock, _ = flow_with(4, largest)
    with pytest.raises(OperatorError, match="crashed"):
        asyncio.run(run_async(flow, clock=clock, state_dir=tmp_path, epoch_interval=0.002))
    flow, clock, out = flow_with(None, largest)
    asyncio.run(run_async(flow, clock=clock, state_dir=tmp_path, epoch_interval=0.002))
    assert out.items == sorted(((at, i), 1) for at in range(5) for i in range(6_000))
    assert max(largest) <= 1024


class Steady(Source):
    """One record a poll, `polls` polls, each poll 0.1 ms of the virtual
    clock; its snapshot is its position. Given `fail_after`, a poll past
    that time on the clock fails."""

    def __init__(self, clock, polls, fail_after=None) -> None:
        self.clock, self.polls, self.fail_after = clock, polls, fail_after
        self.at = 0

    def poll(self):
        if self.fail_after is not None and self.clock.monotonic() > self.fail_after:
            raise RuntimeError("crashed")
        self.clock.advance(1e-4)
        self.emit([-1 - self.at])  # (-1, -2, ...: apart from the other source's 0, 1, ...)
        self.at += 1
        return self.at < self.polls

    def on_epoch(self, epoch):
        return self.at

    def restore(self, snapshot):
        self.at = snapshot


def test_a_source_whose_end_waits_behind_its_pieces_is_resumed_as_ended(tmp_path):
    """A source emits 20,000 records in its one poll and ends: its end
    waits behind the pieces (~20 ms of the virtual clock), while epochs
    start every 3 ms, completed by a second source's markers. The run fails
    at 40 ms; resumed, the first source has ended (its records are all in
    the snapshot after it) and is not read again: every record is counted
    once. (Had it snapshotted its state as live at those epochs, it would
    be polled again in the resumed run: 20,000 records counted twice.)"""

    def flow_with(fail_after, largest):
        clock = VirtualClock()
        flow = Dataflow("ending")
        burst = flow.source(lambda: Burst(20_000), name="burst")
        steady = flow.source(lambda: Steady(clock, 600, fail_after), name="steady")
        out = burst.union(steady).apply(lambda: Tally(clock, largest), name="tally").collect()
        return flow, clock, out

    largest: list = []
    flow, clock, _ = flow_with(0.04, largest)
    with pytest.raises(OperatorError, match="crashed"):
        asyncio.run(run_async(flow, clock=clock, state_dir=tmp_path, epoch_interval=0.003))
    flow, clock, out = flow_with(None, largest)
    asyncio.run(run_async(flow, clock=clock, state_dir=tmp_path, epoch_interval=0.003))
    assert out.items == [(i, 1) for i in range(-600, 20_000)]
    assert max(largest) <= 1024


# -- 2. the handler an error in a later piece names --------------------------------------------


class BadAfterLarge(Operator):
    """In the handler `where`, emits 5,000 records, then something that is
    not a batch (a str): it is found out when it goes on, after the pieces."""

    def __init__(self, where: str) -> None:
        self.where = where

    def on_batch(self, port, batch):
        pass

    def on_watermark(self, watermark):
        if self.where == "on_watermark" and watermark == _INF:
            self._emit()

    def on_end(self):
        if self.where == "on_end":
            self._emit()

    def _emit(self):
        self.emit(list(range(5_000)))
        self.emit("oops")


@pytest.mark.parametrize("where", ["on_watermark", "on_end"])
def test_an_error_in_a_later_piece_names_the_handler_that_made_the_output(where):
    """The str is refused when it goes on, in a later tick: the error named
    `BadAfterLarge.on_batch`, a handler that never ran with a record."""
    flow = Dataflow("bad")
    flow.from_iterable([1.0], timestamp=float).apply(lambda: BadAfterLarge(where), name="bad").collect()
    with pytest.raises(OperatorError, match="given a str") as caught:
        run(flow)
    text = str(caught.value)
    assert f"BadAfterLarge.{where}" in text and "on_batch" not in text, text
