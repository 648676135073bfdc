"""The sending end of an exchange edge on one kernel.

A batch of `(key, value)` pairs is split by the key's owner (a stable hash:
`kernel.net.Partitioner`); this kernel's share goes straight into the
consumer's inbox, the others' to the transport, each on the edge's channel.
Progress (watermarks, IDLE, epoch markers, end of input) goes to every
kernel, after the data it follows.

Past two kernels a watermark goes to the other kernels at most once every
`progress_interval(peers)` seconds; the latest one waits meanwhile (a timer
sends it when the interval is up), and any other progress sends it first.
Each watermark a source moves goes to every other kernel on every exchange
edge, so the watermarks a kernel receives grew with the kernel count while
its share of the work shrank: on a 16-CPU machine a NEXMark q8 kernel sent
~7,400 progress frames for its 62,500 events (benches/RESULTS.md). A
watermark held back is only a later promise (Flink sends them every 200 ms
by default), as long as nothing crosses it that it would have made late:
records at or after it may overtake it; a batch with a record before it,
on any of the kernel's exchange edges, sends it first, and so does any
other progress on its own edge; and the first watermark after IDLE goes at
once (it makes the kernel active again at the others, so their frontiers
wait for it). Under a `VirtualClock` (a test driving time) there is no
interval: its timers would wait for `advance()`.
"""

from __future__ import annotations

import math

from kernel.dataflow import IDLE
from kernel.dataflow._errors import (
    UNHASHABLE_ACROSS_KERNELS,
    UNHASHABLE_KEY,
    UNPICKLABLE_RECORD,
    OperatorError,
    is_unhashable,
)
from kernel.net._channel import TimedBatch
from kernel.net._codec import UnpicklableRecord
from kernel.scheduling._clock import SystemClock

from ._instance import END

#: seconds between two watermarks sent to the other kernels, per kernel past
#: the second: what each kernel receives stays near 1,000 watermarks a
#: second per edge whatever the kernel count (N - 1 senders, every N - 2 ms)
PROGRESS_INTERVAL_PER_PEER = 0.001


def progress_interval(peers: int) -> float:
    """How long a watermark may wait before going to the other kernels:
    none on two kernels, 1 ms on three, 14 ms on sixteen."""
    return PROGRESS_INTERVAL_PER_PEER * max(0, peers - 2)


class ExchangeOutput:
    chained = False

    def __init__(self, channel: int, upstream, local, local_channel: int, partitioner, transport,
                 kernel=None, holding: set | None = None) -> None:
        self.channel = channel  # the transport's channel for this edge
        self.upstream = upstream
        self.local = local
        self.local_channel = local_channel
        self.partitioner = partitioner
        self.transport = transport
        self.index = transport.index
        self.peers = transport.peers
        timed_by_the_system = kernel is not None and isinstance(kernel.clock, SystemClock)
        self._interval = progress_interval(self.peers) if timed_by_the_system else 0.0
        self._kernel = kernel
        self._held = None  # the latest watermark not yet sent to the other kernels
        # this kernel's exchanges holding one: a record behind any of them
        # sends those first, whichever edge it takes (two edges may meet
        # again in one step on another kernel: a join, a union)
        self._holding = set() if holding is None else holding
        self._sent_at = -math.inf  # when a watermark last went to them
        self._timer = None
        self._idle_sent = False  # IDLE was the last progress they had from here

    def deliver(self, _channel: int, payload) -> None:
        transport, channel = self.transport, self.channel
        if isinstance(payload, list):
            if self._holding and payload.__class__ is TimedBatch and payload.timestamps:
                earliest = min(payload.timestamps)
                for behind in [out for out in self._holding if earliest < out._held]:
                    behind._send_held()  # a record behind it must find it there first, as late
            try:
                parts = self.partitioner.split(payload)
            except Exception as exc:
                raise self._key_error(payload, exc) from exc
            for dest, part in enumerate(parts):
                if part:
                    if dest == self.index:
                        self.local.deliver(self.local_channel, part)
                    else:
                        try:
                            transport.send_batch(dest, channel, part)
                        except UnpicklableRecord as exc:
                            raise self._unpicklable(exc) from exc.__cause__
            return
        self.local.deliver(self.local_channel, payload)
        if self._interval:
            if payload.__class__ is float:
                now = self._kernel.clock.monotonic()
                wait = self._sent_at + self._interval - now
                if wait > 0 and not self._idle_sent:
                    self._held = payload
                    self._holding.add(self)
                    if self._timer is None:
                        self._timer = self._kernel.call_later(wait, self._interval_up)
                    return
                self._sent_at = now
                self._held = None
                self._holding.discard(self)
                self._idle_sent = False
                if self._timer is not None:  # one held before, overtaken by this one
                    self._timer.cancel()
                    self._timer = None
            else:
                if self._held is not None:
                    self._send_held()  # progress keeps its order: the watermark first
                if payload is IDLE:
                    self._idle_sent = True  # until a watermark goes (epoch markers between change nothing)
        self._broadcast(None if payload is END else payload)  # None: the transport's end of input

    def _broadcast(self, wire) -> None:
        transport, channel, index = self.transport, self.channel, self.index
        for dest in range(self.peers):
            if dest != index:
                transport.send_progress(dest, channel, wire)

    def _interval_up(self) -> None:
        self._timer = None
        # the loop's timers may fire up to a millisecond early (libuv's
        # resolution): then wait the rest, so that none comes sooner
        wait = self._sent_at + self._interval - self._kernel.clock.monotonic()
        if wait > 0:
            self._timer = self._kernel.call_later(wait, self._interval_up)
        else:
            self._send_held()

    def _send_held(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, None
        self._holding.discard(self)
        if held is not None:
            self._sent_at = self._kernel.clock.monotonic()
            self._broadcast(held)

    # The errors below name the step whose output crosses kernels (key_by,
    # or what runs between it and the exchange) and the record at fault,
    # found again only now, on the error path.

    def _key_error(self, pairs: list, exc: Exception) -> OperatorError:
        """A key the partitioner cannot place: unhashable, or without a stable hash."""
        found, pair = self.partitioner.failing_pair(pairs)
        if found and is_unhashable(pair[0]):
            return OperatorError.wrap(self.upstream.name, "hash(key)", exc, record=pair,
                                      hint=UNHASHABLE_KEY)
        return OperatorError.wrap(self.upstream.name, "net.stable_hash(key)", exc, record=pair,
                                  has_record=found, hint=UNHASHABLE_ACROSS_KERNELS)

    def _unpicklable(self, exc: UnpicklableRecord) -> OperatorError:
        return OperatorError.wrap(self.upstream.name, "pickle.dumps", exc.__cause__, record=exc.record,
                                  has_record=exc.found, hint=UNPICKLABLE_RECORD)
