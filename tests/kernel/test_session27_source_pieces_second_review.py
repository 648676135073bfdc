"""Second review of a user `Source`'s large emit handed on in pieces
(`Instance._source_large`).

* A user's `Source` with event time emits its records as a `TimedBatch`
  (the only way a `Source` of one's own gives them timestamps): one of a
  million records in one poll went downstream whole, in one activation,
  the host's loop held all the while, as a plain list did before the
  pieces. It now goes on in pieces too, each a `TimedBatch` with its
  records' stamps, the watermark after the last.
* A source's task emitting after its poll returned False: the records went
  on after the end of input, or, behind a large emit's pieces, were
  dropped in silence; it is an error naming the source now.

Each test compares against a plain-Python reference."""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget import Costly, slices, with_host
from test_session27_source_pieces_review import Script, Seen, polls

import kernel.runtime._instance as instance_module
import kernel.runtime._user_pieces as user_pieces
from kernel import Dataflow, Operator, Source, TimedBatch, VirtualClock, run, run_async
from operators import Tumbling

_INF = float("inf")


class TimedBurst(Source):
    """One poll: `n` records in one `TimedBatch` (record i at i / per_second
    seconds), whatever `records_wanted` says; then its watermark moves to
    the last stamp, and it ends."""

    def __init__(self, n: int, per_second: float = 1000.0) -> None:
        self.n, self.per_second = n, per_second

    def poll(self):
        stamps = [i / self.per_second for i in range(self.n)]
        self.emit(TimedBatch(list(range(self.n)), stamps))
        self.advance_watermark(stamps[-1])
        return False


class Noted(Operator):
    """Notes each batch (its class, records and stamps) and each watermark,
    in order, and passes the batches on."""

    def __init__(self, seen) -> None:
        self.seen = seen

    def on_batch(self, port, batch):
        self.seen.append(("batch", batch.__class__, list(batch), list(getattr(batch, "timestamps", []))))
        self.emit(batch)

    def on_watermark(self, watermark):
        self.seen.append(("watermark", watermark))


class Sizes(Operator):
    """Hands on the size of each batch it is given."""

    def on_batch(self, port, batch):
        self.emit([len(batch)])


def test_a_sources_large_timed_batch_goes_on_in_timed_pieces_before_its_watermark():
    """10,000 records with stamps in one TimedBatch: the step after gets
    them in TimedBatches of 1,024 (the last 784), each record with its own
    stamp, then the watermark; a tumbling count of 1 s after it counts every
    record in its window (none taken for late). It was given one batch of
    10,000."""
    seen: list = []
    flow = Dataflow("timed burst")
    counts = (flow.source(lambda: TimedBurst(10_000), name="timed")
                  .apply(lambda: Noted(seen), name="noted")
                  .key_by(lambda x: x % 3).window(Tumbling(1.0)).count().collect())
    run(flow)
    batches = [entry for entry in seen if entry[0] == "batch"]
    assert [len(records) for _, _, records, _ in batches] == [1024] * 9 + [784]
    assert all(cls is TimedBatch for _, cls, _, _ in batches)
    assert [r for _, _, records, _ in batches for r in records] == list(range(10_000))
    assert [s for _, _, _, stamps in batches for s in stamps] == [i / 1000.0 for i in range(10_000)]
    assert [entry[0] for entry in seen] == ["batch"] * 10 + ["watermark"] * 2  # 9.999, then the end's inf
    expected = Counter((i % 3, float(i // 1000)) for i in range(10_000))
    assert Counter({(k, w.start): n for k, w, n in counts.items}) == expected


async def test_a_sources_large_timed_batch_leaves_the_host_a_turn_between_its_pieces():
    """The same on a virtual clock, each record costing the step after it
    1 us: it gets 1,024 records a slice, the host's loop running between
    any two, in parts of 250 once two pieces in a row have taken more than
    the budget (it got 10,000 in one slice)."""
    clock = VirtualClock()
    flow = Dataflow("timed burst")
    flow.trace = trace = []
    out = (flow.source(lambda: TimedBurst(10_000), name="timed")
               .apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-6), name="costly").collect())
    await with_host(flow, clock)
    assert out.items == list(range(10_000))
    sizes = [[n for _, n in one] for one in slices(trace)]
    assert [n for one in sizes for n in one] == [1024] * 3 + ([250] * 4 + [24]) * 6 + [250] * 3 + [34]
    assert sizes[:3] == [[1024]] * 3 and max(map(sum, sizes)) == 1024, sizes


@pytest.mark.parametrize("cores", [1, 2])
def test_a_sources_timed_batches_large_and_small_count_once_in_their_windows(cores):
    """Polls alternate a TimedBatch of 9,000 with one of 3 (and the
    watermark after each), on every kernel, through an exchange into a
    tumbling count: each window counts exactly the records of its second,
    the large ones having gone on in pieces."""

    class Alternating(Source):
        def open(self, context):
            self.at, self.sizes = 0, [9_000, 3, 6_000, 3]

        def poll(self):
            size = self.sizes.pop(0)
            records = list(range(self.at, self.at + size))
            self.at += size
            self.emit(TimedBatch(records, [r / 1000.0 for r in records]))
            self.advance_watermark((self.at - 1) / 1000.0)
            return bool(self.sizes)

    flow = Dataflow("alternating")
    source = flow.source(Alternating, name="alternating")
    counts = source.key_by(lambda x: x % 5).window(Tumbling(1.0)).count().collect()
    sizes = source.apply(Sizes, name="sizes").collect()
    run(flow, cores=cores)
    assert sorted(sizes.items) == sorted(([1024] * 8 + [808, 3] + [1024] * 5 + [880, 3]) * cores)
    expected = Counter((i % 5, float(i // 1000)) for i in range(15_006) for _ in range(cores))
    assert Counter({(k, w.start): n for k, w, n in counts.items}) == expected



class TimedScript(Script):
    """`Script` (the first review's) whose emits are TimedBatches, record r
    stamped r seconds (the reference cuts them as it cuts lists)."""

    def open(self, context):
        emit = self.emit
        self.emit = lambda records: emit(TimedBatch(records, [float(r) for r in records]))


class SeenTimed(Seen):
    """`Seen`, checking that each batch is a TimedBatch whose stamps are its records'."""

    def on_batch(self, port, batch):
        assert batch.__class__ is TimedBatch and batch.timestamps == [float(r) for r in batch], batch
        super().on_batch(port, batch)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=polls, per_record=st.sampled_from([0.0, 1e-5, 2e-4]),
       epoch_interval=st.sampled_from([None, 0.0001, 0.0003, 0.002]))
def test_a_sources_timed_pieces_keep_order_with_its_watermarks_epochs_and_end(
        monkeypatch, script, per_record, epoch_interval):
    """The first review's property for a source emitting TimedBatches (pieces
    of 2 past 2 records): the step after it sees exactly the TimedBatches
    the rule cuts, each record with its stamp, in order, each watermark
    after the records emitted before it, the end last, and each epoch's
    snapshot after the source holds exactly the records the source had
    emitted when it took its own."""
    monkeypatch.setattr(user_pieces, "LARGE_OUTPUT", 2)
    monkeypatch.setattr(user_pieces, "PIECE", 2)
    monkeypatch.setattr(instance_module._Pace, "FIRST", 2)
    clock = VirtualClock()
    expected, positions, seen, counts = [], {}, [], {}
    flow = Dataflow("timed script")
    flow.source(lambda: TimedScript(script, expected, positions), name="script").apply(
        lambda: SeenTimed(seen, counts, clock, per_record), name="seen")
    with tempfile.TemporaryDirectory() as state:
        options = {} if epoch_interval is None else {"state_dir": state, "epoch_interval": epoch_interval}
        asyncio.run(run_async(flow, clock=clock, **options))
    assert seen == [*expected, ("end",)]
    assert counts == {epoch: at for epoch, at in positions.items() if epoch in counts}
    assert counts.keys() == positions.keys()


# -- 2. an emit after the source's end -------------------------------------------------------------


class EmitsAfterItsEnd(Source):
    """Its one poll starts a task, emits `n` records and ends (False); the
    task then emits one record more, after the end of the source's input."""

    def __init__(self, n: int) -> None:
        self.n = n

    def poll(self):
        self.context.kernel.spawn(self._late(), name="late emitter")
        self.emit(list(range(self.n)))
        return False

    async def _late(self):
        await asyncio.sleep(0)
        self.emit(["late"])


@pytest.mark.parametrize("n", [10, 10_000])
async def test_an_emit_after_a_sources_end_is_an_error_naming_the_source(n):
    """A source's task emits after its poll returned False: the record went
    on after the end of input (10 records before it), or, behind the pieces
    of a large emit (10,000), was dropped in silence with the pieces after
    the end. Either way it is an error naming the source and its end."""
    clock = VirtualClock()
    flow = Dataflow("late")
    flow.trace = trace = []
    (flow.source(lambda: EmitsAfterItsEnd(n), name="late")
         .apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-6), name="costly").collect())
    with pytest.raises(Exception, match=r"late.*emit\(\) after the end of its input") as caught:
        await with_host(flow, clock)
    assert "poll returned False" in str(caught.value), caught.value
