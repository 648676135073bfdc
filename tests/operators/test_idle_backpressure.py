"""A source held back by backpressure is not idle.

First `EventTimeSource` alone, its idle timer fired by hand: idle after a
period in which it had nothing when asked, not after one in which it was not
asked. Then a run on two kernels: kernel 0's share of a timed source goes
through a small ring to kernel 1, which is slow (a step that sleeps on every
batch there), so kernel 0's sources spend most of the run paused with data
waiting. Were kernel 0 taken for idle after `idle_timeout`, kernel 1's
windows would close on kernel 1's own watermark alone and kernel 0's records
would arrive late."""

from __future__ import annotations

import time
from collections import Counter

import pytest

import kernel.execution._cores as launcher
from kernel import Dataflow, Operator, run
from kernel.dataflow._key_groups import default_key_groups, owner_table
from net import Partitioner
from operators import EventTimeSource, Source, Tumbling

# -- the idle rule, without a runtime ----------------------------------------------


class Scripted(Source):
    """Each poll emits `waiting` (then empty) and returns `more`."""

    def __init__(self) -> None:
        self.waiting: list = []
        self.more = None

    def poll(self):
        batch, self.waiting = self.waiting, []
        self.emit(batch)
        return self.more


class Timers:
    """The kernel's `call_later`, fired by hand."""

    def __init__(self) -> None:
        self.pending: list = []
        self.kernel = self  # serves as the context too

    def call_later(self, delay, fn):
        self.pending.append(fn)
        return self

    def cancel(self) -> None:
        self.pending.clear()

    def fire(self) -> None:
        fn = self.pending.pop(0)
        fn()


def wired(inner: Source) -> tuple[EventTimeSource, list, Timers]:
    """`inner` in an EventTimeSource with the kernel's helpers faked."""
    source = EventTimeSource(inner, timestamp=float, idle_timeout=1.0)
    trace: list = []
    source.name = "scripted"
    source.emit = lambda batch: trace.append(("batch", list(batch)))
    source.wake = lambda: trace.append("wake")
    source.mark_idle = lambda: trace.append("idle")
    source.advance_watermark = lambda wm: None
    source.schedule = lambda t, data=None: None
    timers = Timers()
    source.context = timers  # as the kernel sets it before open
    source.open(timers)
    return source, trace, timers


def test_a_source_woken_with_data_but_not_polled_is_not_idle():
    inner = Scripted()
    source, trace, timers = wired(inner)
    timers.fire()  # not polled yet: the kernel owes it its first poll
    source.poll()  # nothing; returns None: waits for a wake
    timers.fire()
    assert trace == ["idle"]
    trace.clear()
    inner.waiting = [1.0]
    inner.wake()  # its reader filled the buffer; the kernel holds it back
    timers.fire()
    timers.fire()
    assert trace == ["wake"]
    source.poll()
    timers.fire()  # emitted in this period
    timers.fire()  # waiting since: idle
    assert trace == ["wake", ("batch", [1.0]), "idle"]


def test_a_source_that_asked_to_be_polled_again_is_idle_only_once_polled_for_nothing():
    inner = Scripted()
    inner.more = True
    source, trace, timers = wired(inner)
    inner.waiting = [1.0, 2.0]
    source.poll()
    timers.fire()
    timers.fire()  # held back the whole period (backpressure): not idle
    assert trace == [("batch", [1.0, 2.0])]
    source.poll()  # asked, and had nothing
    timers.fire()
    assert trace == [("batch", [1.0, 2.0]), "idle"]


def test_a_wake_during_an_empty_poll_is_data_to_come():
    inner = Scripted()
    source, trace, timers = wired(inner)
    inner.poll = lambda: inner.wake()  # more came in while it polled: poll it again
    source.poll()
    timers.fire()
    assert trace == ["wake"]


# -- on two kernels, with a slow one -----------------------------------------------

RECORDS = 24_000
BATCH = 1_000
SECONDS_PER_RECORD = 0.001  # event time: 24 s in all, 24 one-second windows
# every key is kernel 1's, placed as the run places it: by key group (a
# bare Partitioner(2) hashes by kernel, and its key 5 was kernel 0's)
KEYS = [k for k in range(40) if Partitioner(2, owner_table(2, default_key_groups(2))).owner(k) == 1][:3]


def record(i: int) -> tuple:
    return KEYS[i % len(KEYS)], i * SECONDS_PER_RECORD


class SlowOnKernel1(Operator):
    """Passes its batches on, on kernel 1 after a short sleep for each."""

    def on_batch(self, port, batch):
        if self.context.index == 1:
            time.sleep(0.02)
        self.emit(batch)


@pytest.mark.usefixtures("no_leaks")
def test_a_source_paused_by_backpressure_is_not_idle(monkeypatch):
    # 4 KiB rings (4 MiB normally): one batch of kernel 0's share fills its
    # ring to kernel 1 several times over, so its sources wait for kernel 1
    # far longer than idle_timeout.
    monkeypatch.setattr(launcher, "RING_BYTES", 4 << 10)

    async def events():
        for i in range(RECORDS):
            yield record(i)

    flow = Dataflow()
    counts = (flow.from_async_iterable(events, batch_size=BATCH, timestamp=lambda r: r[1], idle_timeout=0.05)
              .apply(SlowOnKernel1, name="slow on kernel 1")
              .key_by(lambda r: r[0])
              .window(Tumbling(1.0))
              .fold(int, lambda n, _: n + 1))  # no partial count before the exchange
    out = counts.collect()
    run(flow, cores=2)

    expected = Counter((key, int(stamp // 1.0)) for key, stamp in map(record, range(RECORDS)))
    got = Counter()
    for key, window, count in out.items:
        got[key, int(window.start)] += count
    assert counts.late_count.value == 0
    assert got == expected
