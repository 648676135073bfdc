"""Leftovers in the kernel's runtime (kernel/runtime/):

* an `emit` (or a source's watermark) inside a user operator's `open()`
  went downstream at once, to steps not opened yet (an `on_batch` before
  its `open`: AttributeError); it now goes on once every step is open
  (and restored), in order, before anything else the step hands on; a
  run resumed from a state_dir does not hand it on again (the snapshot's
  state holds it already, as a crash-free run's would);
* a user operator's `TimedBatch` emitted behind a large emit went whole;
  a non-batch value emitted behind one was refused only later, by the
  piece that handed it on.

Each test compares against a plain-Python reference."""

from __future__ import annotations

import asyncio
import tempfile

import pytest

from kernel import Dataflow, Operator, OperatorError, Source, TimedBatch, VirtualClock, run, run_async

_INF = float("inf")


class EmitsAtOpen(Operator):
    """Emits [100, 101] in open(), then passes its input on."""

    def open(self, context):
        self.emit([100, 101])

    def on_batch(self, port, batch):
        self.emit(batch)


class Counts(Operator):
    """Numbers the records it is given (its count is set in open)."""

    def open(self, context):
        self.n = 0
        self.index = context.index

    def on_batch(self, port, batch):
        out = []
        for x in batch:
            self.n += 1
            out.append((x, self.n) if self.index == 0 else (x, self.n, self.index))
        self.emit(out)


def test_an_emit_in_open_reaches_the_next_step_after_its_open_before_the_first_batch():
    """The brief's case: the step after EmitsAtOpen was given [100, 101]
    before its own open() ran (AttributeError: no attribute 'n')."""
    flow = Dataflow("at-open")
    out = flow.from_iterable(range(3)).apply(EmitsAtOpen).apply(Counts).collect()
    run(flow, cores=1)
    assert out.items == [(100, 1), (101, 2), (0, 3), (1, 4), (2, 5)]


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_an_emit_in_open_crosses_an_exchange_once_per_kernel(cores):
    """Through an exchange (key_by) on 1, 2 and 3 kernels: each kernel's
    EmitsAtOpen emits [100, 101] once, and the keyed step after it gets
    them after its open, each before any record of its kernel's input."""
    flow = Dataflow("at-open-exchange")
    out = (flow.from_iterable(range(20)).apply(EmitsAtOpen).key_by(lambda x: x % 7)
               .apply(Counts).collect())
    run(flow, cores=cores)
    assert sorted(x for (_key, x), *_ in out.items) == sorted([*range(20), *[100, 101] * cores])
    by_kernel: dict = {}
    for _x, n, *index in out.items:
        by_kernel.setdefault(tuple(index), []).append(n)
    assert all(sorted(ns) == list(range(1, len(ns) + 1)) for ns in by_kernel.values())


def _halvings(n):
    """The loop's body as plain Python: n // 2, again, while n > 1."""
    out = []
    while n > 1:
        n //= 2
        out.append(n)
    return out


@pytest.mark.parametrize("cores", [1, 2])
def test_an_emit_in_open_inside_a_loop_goes_into_its_first_round(cores):
    """Inside `iterate`: EmitsAtOpen's [100, 101] reach Counts after its
    open, as round 0's records, and are fed back like the input's."""

    def body(numbers):
        counted = numbers.filter(lambda n: n > 1).map(lambda n: n // 2).apply(EmitsAtOpen).apply(Counts)
        return counted.map(lambda pair: pair[0]), counted

    flow = Dataflow("at-open-loop")
    out = flow.from_iterable([8, 3]).iterate(body, max_rounds=10).collect()
    run(flow, cores=cores)
    expected = _halvings(8) + _halvings(3) + [x for n in (100, 101) for x in [n, *_halvings(n)]] * cores
    assert sorted(x for x, *_ in out.items) == sorted(expected)
    by_kernel: dict = {}
    for _x, n, *index in out.items:
        by_kernel.setdefault(tuple(index), []).append(n)
    assert all(sorted(ns) == list(range(1, len(ns) + 1)) for ns in by_kernel.values())


class OpensWithRecords(Source):
    """A user's Source: emits `head` and advances its watermark in open(),
    then emits `body` (event time = the record) and ends."""

    def __init__(self, head, body) -> None:
        self.head, self.body = head, body

    def open(self, context):
        self.emit(TimedBatch(list(self.head), [float(x) for x in self.head]))
        self.advance_watermark(float(max(self.head)))

    def poll(self):
        self.emit(TimedBatch(list(self.body), [float(x) for x in self.body]))
        return False


class Seen(Operator):
    """Notes what reaches it, in order: ("batch", records), ("wm", w), ("end",)."""

    def __init__(self, seen) -> None:
        self.seen = seen

    def open(self, context):
        self.opened = True

    def on_batch(self, port, batch):
        assert self.opened
        self.seen.append(("batch", list(batch)))
        self.emit(batch)

    def on_watermark(self, watermark):
        assert self.opened
        self.seen.append(("wm", watermark))

    def on_end(self):
        self.seen.append(("end",))


def test_a_sources_emit_and_watermark_in_open_go_on_in_order_after_every_open():
    seen: list = []
    flow = Dataflow("source-at-open")
    out = (flow.source(lambda: OpensWithRecords([1, 2], [3, 4]), name="src")
               .apply(lambda: Seen(seen), name="seen").collect())
    run(flow, cores=1)
    assert out.items == [1, 2, 3, 4]
    assert seen == [("batch", [1, 2]), ("wm", 2.0), ("batch", [3, 4]), ("wm", _INF), ("end",)]


class Failing(Source):
    """Emits `size` records a poll, `polls` polls; its snapshot is its
    position. In a run given `fail_at`, the poll of that number fails."""

    def __init__(self, clock, size, polls, fail_at=None) -> None:
        self.clock, self.size, self.polls, self.fail_at = clock, size, polls, fail_at
        self.at = 0

    def poll(self):
        if self.at == self.fail_at:
            raise RuntimeError("crashed")
        self.clock.advance(0.003)
        self.emit([(self.at, i) for i in range(self.size)])
        self.at += 1
        return self.at < self.polls

    def on_epoch(self, epoch):
        return self.at

    def restore(self, snapshot):
        self.at = snapshot


class Tally(Operator):
    """How many times each record came (set up in open), snapshotted; emits
    the tally at the end."""

    def open(self, context):
        self.tally: dict = {}

    def on_batch(self, port, batch):
        for record in batch:
            self.tally[record] = self.tally.get(record, 0) + 1

    def on_end(self):
        self.emit(sorted(self.tally.items(), key=repr))

    def on_epoch(self, epoch):
        return dict(self.tally)

    def restore(self, snapshot):
        self.tally = dict(snapshot)


def test_a_run_resumed_from_its_state_dir_hands_on_what_open_emitted_once(tmp_path):
    """A crash-free run counts [100, 101] (emitted in open) once; a run
    that fails at the fifth poll, resumed from its state_dir, counts them
    once too: the snapshot it resumes from holds them already (every epoch
    marker came after them), so open's emits of the resumed run are not
    handed on again. Before the fix the tally was given them before its
    open."""
    from tests._crash_runs import newest_complete

    def flow_with(fail_at):
        clock = VirtualClock()
        flow = Dataflow("resumed")
        out = (flow.source(lambda: Failing(clock, 20, 6, fail_at), name="failing")
                   .apply(EmitsAtOpen, name="at-open").apply(Tally, name="tally").collect())
        return flow, clock, out

    expected = sorted([*(((at, i), 1) for at in range(6) for i in range(20)), (100, 1), (101, 1)], key=repr)
    flow, clock, out = flow_with(None)
    asyncio.run(run_async(flow, clock=clock, state_dir=tmp_path / "free", epoch_interval=0.002))
    assert out.items == expected
    flow, clock, _ = flow_with(4)
    with pytest.raises(OperatorError, match="crashed"):
        asyncio.run(run_async(flow, clock=clock, state_dir=tmp_path / "s", epoch_interval=0.002))
    assert newest_complete(tmp_path / "s") >= 2  # resumed from a snapshot, not from the start
    flow, clock, out = flow_with(None)
    asyncio.run(run_async(flow, clock=clock, state_dir=tmp_path / "s", epoch_interval=0.002))
    assert out.items == expected


# -- a user operator's emits behind a large one ------------------------------------------------


class Shapes(Operator):
    """Notes each batch it is given: (class name, records, stamps or None)."""

    def __init__(self, seen) -> None:
        self.seen = seen

    def on_batch(self, port, batch):
        self.seen.append((type(batch).__name__, list(batch), getattr(batch, "timestamps", None)))


class TimedBehindLarge(Operator):
    """On its one batch: a plain list of 5,000, then a TimedBatch of 3,000
    (stamps: the record as a float), then, if `first_timed`, a second
    TimedBatch of 5,000 emitted first of all."""

    def __init__(self, first_timed) -> None:
        self.first_timed = first_timed

    def on_batch(self, port, batch):
        if self.first_timed:
            self.emit(TimedBatch(list(range(5_000)), [float(x) for x in range(5_000)]))
        self.emit(list(range(5_000)))
        self.emit(TimedBatch(list(range(3_000)), [float(x) for x in range(3_000)]))


def _cut(records, stamps, timed):
    """The reference: `records` in pieces of 1,024, each a TimedBatch with
    its stamps where `timed`."""
    return [("TimedBatch" if timed else "list", records[at:at + 1024],
             stamps[at:at + 1024] if timed else None) for at in range(0, len(records), 1024)]


@pytest.mark.parametrize("first_timed", [False, True])
def test_a_timed_batch_behind_or_as_a_large_emit_goes_on_in_pieces_with_its_stamps(first_timed):
    seen: list = []
    flow = Dataflow("timed-pieces")
    (flow.from_iterable([0]).apply(lambda: TimedBehindLarge(first_timed), name="large")
         .apply(lambda: Shapes(seen), name="shapes"))
    run(flow, cores=1)
    five, three = list(range(5_000)), list(range(3_000))
    expected = (_cut(five, [float(x) for x in five], True) if first_timed else [])
    expected += _cut(five, None, False) + _cut(three, [float(x) for x in three], True)
    assert seen == expected


class BadBehindLarge(Operator):
    """Emits 5,000 records, then a bare int; with `catch`, catches the
    TypeError the emit call raises."""

    def __init__(self, caught) -> None:
        self.caught = caught

    def on_batch(self, port, batch):
        self.emit(list(range(5_000)))
        try:
            self.emit(5)
        except TypeError as exc:
            if self.caught is None:
                raise
            self.caught.append(str(exc))


def test_a_non_batch_emitted_behind_a_large_emit_is_refused_at_the_emit_call():
    """Refused where it is emitted (the handler can catch it), not later
    by the piece that hands it on; the large emit's records all go on."""
    caught: list = []
    flow = Dataflow("bad-behind")
    out = flow.from_iterable([0]).apply(lambda: BadBehindLarge(caught), name="bad").collect()
    run(flow, cores=1)
    assert out.items == list(range(5_000))
    assert len(caught) == 1 and "emit() takes a batch" in caught[0] and "int" in caught[0]
    flow = Dataflow("bad-behind-uncaught")
    flow.from_iterable([0]).apply(lambda: BadBehindLarge(None), name="bad").collect()
    named = r"'bad \(step 1\)'.*BadBehindLarge\.on_batch.*emit\(\) takes a batch"
    with pytest.raises(OperatorError, match=named):
        run(flow, cores=1)


# -- a source's task advancing its watermark while an epoch marker waits behind pieces ---------


class TrickleTimed(Source):
    """Its first poll emits 20,000 timed records (stamp: record / 1,000) in
    one TimedBatch and starts a task that, one turn of the loop at a time,
    40 times, emits one more record and advances the watermark to its
    stamp, then wakes the source; its second poll ends."""

    def __init__(self) -> None:
        self.next = 0

    def poll(self):
        if self.next == 0:
            self._emit(20_000)
            self.context.kernel.spawn(self._trickle())
            return None
        return False

    def _emit(self, n):
        records = list(range(self.next, self.next + n))
        self.emit(TimedBatch(records, [r / 1000 for r in records]))
        self.next += n

    async def _trickle(self):
        for _ in range(40):
            await asyncio.sleep(0)
            self._emit(1)
            self.advance_watermark((self.next - 1) / 1000)
        self.wake()


class Slow(Operator):
    """Costs the virtual clock 1 us a record, so epochs start meanwhile."""

    def __init__(self, clock) -> None:
        self.clock = clock

    def on_batch(self, port, batch):
        self.clock.advance(1e-6 * len(batch))


async def test_a_watermark_advanced_behind_a_waiting_marker_is_not_in_its_snapshot(monkeypatch):
    """A source's task advances its watermark while an epoch marker waits
    behind a large emit's pieces. Epochs start while the 20,000 records go on in
    pieces and the task advances the watermark behind them (and behind the
    epoch markers waiting there). The source's snapshot is taken when the
    epoch starts, with the watermark advanced so far: each such advance
    was forwarded before the marker (both wait behind the pieces, in
    order), and those made after it are not in the snapshot. So the
    source's snapshotted watermark is exactly the watermark the step after
    it had when the marker reached it: a resumed run restores no
    watermark ahead of its records (none is taken as late)."""
    from kernel.runtime._runtime import Runtime

    taken: dict = {}
    snapshot = Runtime.snapshot

    def noting(self, instance, epoch):
        frontier = instance.output_watermark if instance.is_source else instance.frontier
        taken.setdefault(epoch, {})[instance.name.split()[0]] = frontier
        snapshot(self, instance, epoch)

    monkeypatch.setattr(Runtime, "snapshot", noting)
    clock = VirtualClock()
    flow = Dataflow("trickle-timed")
    flow.source(TrickleTimed, name="trickle").apply(lambda: Slow(clock), name="slow")
    with tempfile.TemporaryDirectory() as state:
        await run_async(flow, clock=clock, state_dir=state, epoch_interval=0.003)
    # some epoch started with the task's watermarks under way, behind the pieces
    assert any(20 < parts.get("trickle", 0) < 20.039 for parts in taken.values()), taken
    assert all(parts.get("trickle", parts["slow"]) == parts["slow"] for parts in taken.values()), taken
