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
