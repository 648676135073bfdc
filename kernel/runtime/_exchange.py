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
~7,400 progress frames for its 62,500 events (benches/RESULTS.md). The
kernel's edges share one interval (`WatermarkPacer`): what they hold goes
in one frame a kernel, at the end of the scheduler's slice at the soonest,
so that the edges one poll moved go together. A watermark held back is
only a later promise (Flink sends them every 200 ms by default), as long
as nothing crosses it that it would have made late: records at or after it
may overtake it; a batch with a record before it, on any of the kernel's
exchange edges, sends it first, and so does any other progress on its own
edge; and the first watermark after IDLE goes at once (it makes the kernel
active again at the others, so their frontiers wait for it). A kernel
sees only what it holds itself: past a second exchange (a watermark held
by the kernel in between) lateness depends on timing, as it did before
the interval. Under a `VirtualClock` (a test driving time) there is no
interval: its timers would wait for `advance()`.
"""

from __future__ import annotations

import math

from kernel.dataflow import IDLE
from kernel.dataflow._errors import (
    PASSES_THROUGH,
    UNHASHABLE_ACROSS_KERNELS,
    UNHASHABLE_KEY,
    UNHASHABLE_RECORD,
    UNPICKLABLE_RECORD,
    OperatorError,
    is_not_a_pair,
    is_unhashable,
    itself,
    not_a_pair,
)
from kernel.net._channel import TimedBatch
from kernel.net._protocol import UnpicklableRecord
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


class WatermarkPacer:
    """When a kernel's exchange edges send their watermarks to the other
    kernels, past two kernels: all together, at most once every `interval`
    seconds, the latest of each edge, in one frame a kernel
    (`ChannelWatermarks`). A watermark moves on every edge a source feeds
    in the same slice, so edge by edge a kernel sent as many frames per
    interval as it had edges, each of them read by every other kernel in an
    activation of its own (timely batches a worker's progress updates
    likewise). A watermark held waits for the timer, or goes with the next
    one sent at once: the first after IDLE on its edge, other progress on
    its edge (sent after it), and a batch with a record before it on any
    edge (`flush_before`)."""

    def __init__(self, transport, kernel, interval: float) -> None:
        self.transport = transport
        self.kernel = kernel
        self.interval = interval
        self.held: dict = {}  # exchange output -> its latest watermark, not yet sent
        self.sent_at = -math.inf  # when watermarks last went to the other kernels
        self._timer = None

    def offer(self, out: ExchangeOutput, watermark: float, at_once: bool = False) -> None:
        """`out`'s new watermark: sent now with every other one held when
        `at_once`, else held until the interval is up, and at least until
        the end of the scheduler's slice, when the other edges that the same
        poll moved have theirs (the first edge's would otherwise go alone,
        just before the others)."""
        self.held[out] = watermark
        if at_once:
            self.flush()
        elif self._timer is None:
            wait = self.sent_at + self.interval - self.kernel.clock.monotonic()
            self._timer = self.kernel.call_later(max(wait, 0.0), self._interval_up)

    def flush_before(self, timestamps: list) -> None:
        """A batch with these event times is about to cross: any watermark
        held that one of its records is behind goes first (with the rest),
        so that the record is late at the other kernels as it would have
        been had nothing been held."""
        earliest = min(timestamps)
        if any(earliest < watermark for watermark in self.held.values()):
            self.flush()

    def flush(self) -> None:
        if self._timer is not None:  # one held before, overtaken by this one
            self._timer.cancel()
            self._timer = None
        held = self.held
        if not held:
            return
        self.held = {}
        self.sent_at = self.kernel.clock.monotonic()
        pairs = []
        for out, watermark in held.items():
            out._idle_sent = False  # a watermark went on its edge
            pairs.append((out.channel, watermark))
        transport, index = self.transport, self.transport.index
        for dest in range(transport.peers):
            if dest == index:
                continue
            if len(pairs) == 1:  # one edge's: the plain frame, as without the pacer
                transport.send_progress(dest, *pairs[0])
            else:
                transport.send_watermarks(dest, pairs)

    def _interval_up(self) -> None:
        self._timer = None
        # the loop's timers may fire up to a millisecond early (libuv's
        # resolution): then wait the rest, so that none comes sooner
        wait = self.sent_at + self.interval - self.kernel.clock.monotonic()
        if wait > 0:
            self._timer = self.kernel.call_later(wait, self._interval_up)
        else:
            self.flush()


def watermark_pacer(transport, kernel) -> WatermarkPacer | None:
    """The pacer a kernel's exchange edges share, or None where watermarks
    go at once: on two kernels, and under a clock other than the system's."""
    interval = progress_interval(transport.peers)
    if not interval or kernel is None or not isinstance(kernel.clock, SystemClock):
        return None
    return WatermarkPacer(transport, kernel, interval)


class ExchangeOutput:
    chained = False

    def __init__(self, channel: int, upstream, local, local_channel: int, partitioner, transport,
                 kernel=None, pacer: WatermarkPacer | None = None) -> None:
        self.channel = channel  # the transport's channel for this edge
        self.upstream = upstream
        self.local = local
        self.local_channel = local_channel
        self.partitioner = partitioner
        self.transport = transport
        self.index = transport.index
        self.peers = transport.peers
        # shared by the kernel's exchange edges (two edges may meet again in
        # one step on another kernel: a join, a union); on its own, one of its own
        self._pacer = pacer if pacer is not None else watermark_pacer(transport, kernel)
        self._idle_sent = False  # IDLE was the last progress they had from here

    def deliver(self, _channel: int, payload) -> None:
        if isinstance(payload, list):
            pacer = self._pacer
            if pacer is not None and pacer.held and payload.__class__ is TimedBatch and payload.timestamps:
                pacer.flush_before(payload.timestamps)
            self._send_records(payload)
            return
        self.local.deliver(self.local_channel, payload)
        pacer = self._pacer
        if pacer is not None:
            if payload.__class__ is float:
                pacer.offer(self, payload, at_once=self._idle_sent)
                return
            if self in pacer.held:
                pacer.flush()  # progress keeps its order: the watermark first
            if payload is IDLE:
                self._idle_sent = True  # until a watermark goes (epoch markers between change nothing)
        self._send_progress(None if payload is END else payload)  # None: the transport's end of input

    def _send_progress(self, wire) -> None:
        transport, channel, index = self.transport, self.channel, self.index
        for dest in range(self.peers):
            if dest != index:
                transport.send_progress(dest, channel, wire)

    def _send_records(self, payload: list) -> None:
        """A batch, split by its keys' owners: this kernel's share straight
        to the consumer, the others' to the transport."""
        try:
            parts = self.partitioner.split(payload)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:  # a key's own __hash__ or __reduce__ may raise anything
            raise self._key_error(payload, exc) from exc
        transport, channel = self.transport, self.channel
        for dest, part in enumerate(parts):
            if part:
                if dest == self.index:
                    self.local.deliver(self.local_channel, part)
                else:
                    try:
                        transport.send_batch(dest, channel, part)
                    except UnpicklableRecord as exc:
                        raise self._unpicklable(exc) from exc.__cause__

    # The errors below name the step whose output crosses kernels (key_by,
    # or what runs between it and the exchange) and the record at fault,
    # found again only now, on the error path.

    def _key_error(self, pairs: list, exc: Exception) -> OperatorError:
        """A key the partitioner cannot place: unhashable, or without a stable hash."""
        found, pair = self.partitioner.failing_pair(pairs)
        if found and is_not_a_pair(pair):  # (a loop's feedback on a keyed stream)
            return not_a_pair(self.upstream.name, exc, pair)
        if found and is_unhashable(pair[0]):
            if getattr(self.upstream.op, "fn", None) is itself:  # distinct()'s key_by: the record's fault
                return OperatorError.wrap(self.upstream.name, "hash(record)", exc, record=pair[1],
                                          hint=UNHASHABLE_RECORD)
            return OperatorError.wrap(self.upstream.name, "hash(key)", exc, record=pair,
                                      hint=UNHASHABLE_KEY)
        return OperatorError.wrap(self.upstream.name, "net.stable_hash(key)", exc, record=pair,
                                  has_record=found, hint=UNHASHABLE_ACROSS_KERNELS)

    def _unpicklable(self, exc: UnpicklableRecord) -> OperatorError:
        return OperatorError.wrap(self.upstream.name, "pickle.dumps", exc.__cause__, record=exc.record,
                                  has_record=exc.found, hint=UNPICKLABLE_RECORD)


class BroadcastOutput(ExchangeOutput):
    """The sending end of a broadcast edge (`Stream.broadcast`): every batch
    to every kernel, this one's straight to the consumer; progress as on an
    exchange edge. Each other kernel's copy is encoded as it is sent, before
    the consumer here gets the batch (a step may keep it, or change it)."""

    def _send_records(self, payload: list) -> None:
        transport, channel, index = self.transport, self.channel, self.index
        for dest in range(self.peers):
            if dest != index:
                try:
                    transport.send_batch(dest, channel, payload)
                except UnpicklableRecord as exc:
                    raise self._unpicklable(exc) from exc.__cause__
        self.local.deliver(self.local_channel, payload)
