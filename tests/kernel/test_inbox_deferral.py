"""An activation that finds the budget spent with batches still in its inbox
leaves them for later ticks, holding the kernel's input meanwhile
(`Instance._defer`): adversarial checks, on a virtual clock where the
operators advance the clock by what their work "costs"."""

from __future__ import annotations

import asyncio

from kernel import Dataflow, Operator, Source, VirtualClock, run_async


class Polls(Source):
    """Emits `batches` batches of `size` records per poll, `polls` times,
    and notes at each poll whether `gate` (the sink) holds the input."""

    def __init__(self, gate, polls=3, batches=8, size=100):
        self.gate, self.polls, self.batches, self.size = gate, polls, batches, size
        self.next = 0

    def poll(self):
        self.gate.polled_while_paused += self.gate.paused
        for _ in range(self.batches):
            self.emit(list(range(self.next, self.next + self.size)))
            self.next += self.size
        self.polls -= 1
        return self.polls > 0


class PausingSink(Operator):
    """An asynchronous sink as operators/_redis.py's: once `limit` records
    wait for its (pretended) writer it pauses the kernel's input, and the
    writer lets go a few host turns later. Each record costs 10 us."""

    def __init__(self, clock, limit):
        self.clock, self.limit = clock, limit
        self.buffered = 0
        self.paused = False
        self.polled_while_paused = 0
        self.seen: list = []

    def on_batch(self, port, batch):
        self.clock.advance(1e-5 * len(batch))
        self.seen.extend(batch)
        self.buffered += len(batch)
        if self.buffered >= self.limit and not self.paused:
            self.paused = True
            self.pause_input(True)
            self._write_later(5)

    def _write_later(self, turns):
        if turns:
            asyncio.get_running_loop().call_soon(self._write_later, turns - 1)
            return
        self.buffered = 0
        self.paused = False
        self.pause_input(False)


async def test_an_operator_that_paused_the_input_stays_paused_when_its_inbox_left_in_part_is_done():
    """The sink's inbox holds a poll's batches (each 1 ms, the whole budget)
    and goes on a batch a slice; the last batch fills its buffer and it
    pauses the input. Its inbox done, the activation lets go of the hold it
    took for the inbox: the sink's own pause must outlive that (both held
    the input as the same holder, the instance, and the source was polled
    while the sink's buffer was full)."""
    clock = VirtualClock()
    sink = PausingSink(clock, limit=800)
    flow = Dataflow("pausing")
    flow.source(lambda: Polls(sink), name="polls").apply(lambda: sink, name="sink")
    await run_async(flow, clock=clock)
    assert sink.seen == list(range(2400))
    assert sink.polled_while_paused == 0


class Costs(Operator):
    """Passes records on; each costs `per_record`, each batch `per_batch`
    seconds of the virtual clock."""

    def __init__(self, clock, per_record, per_batch):
        self.clock, self.per_record, self.per_batch = clock, per_record, per_batch

    def on_batch(self, port, batch):
        self.clock.advance(self.per_batch + self.per_record * len(batch))
        self.emit(batch)



# -- what the metrics say -------------------------------------------------------------------------


async def test_a_kernel_pacing_its_own_work_is_not_said_to_be_backpressured(monkeypatch):
    """A loop's step takes its round in many slices, holding the kernel's
    input meanwhile, and a flat_map's output goes on in pieces: the
    kernel's own pacing, not a full ring to another kernel (README's
    streamkernel_backpressured_seconds_total): no second of it is counted
    as backpressure (the loop's 10,240 records, 10 ms of the virtual
    clock, were)."""
    import kernel.runtime._runtime as runtime_module

    measured: list = []
    built = runtime_module.Runtime.__init__
    ended = runtime_module.Runtime.instance_ended

    def with_metrics(self, *args, **options):
        options["metrics"] = True
        built(self, *args, **options)

    def noting(self, instance):
        ended(self, instance)
        if self._live == 0:
            ongoing = self._paused_at is not None  # (as metrics_snapshot counts a pause under way)
            measured.append(self.backpressured + (clock.monotonic() - self._paused_at if ongoing else 0.0))

    monkeypatch.setattr(runtime_module.Runtime, "__init__", with_metrics)
    monkeypatch.setattr(runtime_module.Runtime, "instance_ended", noting)
    clock = VirtualClock()
    flow = Dataflow("pacing")

    def body(numbers):
        paid = numbers.apply(lambda: Costs(clock, 1e-6, 0.0), name="costly")
        return paid.filter(lambda x: False), paid

    looped = flow.from_iterable(range(10_240), batch_size=1024).iterate(body).collect()
    pieces = (flow.from_iterable([5_000]).flat_map(range)
              .apply(lambda: Costs(clock, 1e-6, 0.0), name="after pieces").collect())
    await run_async(flow, clock=clock)
    assert sorted(looped.items) == list(range(10_240)) and pieces.items == list(range(5_000))
    assert measured == [0.0]
