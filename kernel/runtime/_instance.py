"""An operator instance on one kernel: its inbox, its activation, its progress.

Each graph node becomes an `Instance`: the operator object, its inbox (a list
of `(channel, payload)` in arrival order) and its activation. Upstream
operators deliver into the inbox and mark the instance ready; the instance's
activation drains the inbox through the operator's handlers.

Progress is in-band. A channel's payload is a data batch (a `list`, or a
`TimedBatch` list with event timestamps), a watermark (a `float`), `IDLE`,
an `EpochMarker` or `END`. Because they share one ordered inbox, a watermark
is seen after exactly the data that preceded it. The instance's input
frontier over its channels is kept by a `Frontier` (`_progress.py`: the
rules, as pure data); the instance enacts what it changes: when the frontier
advances, due event-time timers fire (`on_timer`), then `on_watermark` runs,
and the new frontier is forwarded downstream; when every open input is idle,
`on_idle` runs and the instance says IDLE downstream; when every channel has
ended, `on_end` runs and `END` is forwarded.

Epoch markers align (`_channel_epoch`): once the marker of an epoch has come
on every open input, the instance takes its snapshot and forwards the
marker; what arrives on a channel behind its marker meanwhile is held back,
then handled in order (Chandy-Lamport's aligned snapshots, as Flink's).
"""

from __future__ import annotations

import heapq
import itertools
import math

from kernel.dataflow import IDLE, EpochMarker
from kernel.dataflow._errors import KernelError, OperatorError, describe_function
from kernel.dataflow._graph import Node
from kernel.dataflow._operator import Operator

from ._progress import Frontier

END = "<end of input>"  # a str: never a list, never a float
_INF = math.inf


class Instance:
    __slots__ = (
        "_ready",
        "aligning",
        "arrived",
        "chained",
        "ended",
        "held",
        "idle",
        "index",
        "is_source",
        "name",
        "op",
        "output_watermark",
        "pending",
        "ports",
        "progress",
        "released",
        "runtime",
        "scheduled",
        "targets",
        "task_class",
        "timers",
    )

    def __init__(self, node: Node, op: Operator, runtime) -> None:
        self.name = node.label
        self.op = op
        self.runtime = runtime
        self.task_class = op.task_class
        self.is_source = node.is_source
        self.pending: list = []
        self.scheduled = False
        self.ports: list[int] = []  # each input channel's port
        self.progress = Frontier()  # the input frontier over those channels
        self.output_watermark = -_INF  # a source's: what it has promised downstream
        self.idle = False  # a source that said IDLE downstream
        self.timers: list = []  # heap of (event time, sequence, data) for on_timer
        self.index = -1  # position in the runtime's instances
        # epoch alignment: the channels that delivered the marker of epoch
        # `aligning` (None: not aligning), what came behind it on them, and
        # what to handle next once the alignment is done
        self.aligning: int | None = None
        self.arrived: set | None = None
        self.held: list = []
        self.released: list | None = None
        self.ended = False
        self.targets: list[tuple[Instance, int]] = []
        self.chained = False  # runs inside its upstream's activation (see Runtime)
        self._ready = runtime.kernel.ready_function(self.task_class)

    @property
    def frontier(self) -> float:
        """What this instance has promised downstream: its input frontier,
        or a source's output watermark."""
        return self.output_watermark if self.is_source else self.progress.value

    # -- wiring -------------------------------------------------------------

    def add_channel(self, port: int) -> int:
        self.ports.append(port)
        return self.progress.add_channel()

    def install_helpers(self) -> None:
        """Give the operator its emit/wake/advance_watermark."""
        op = self.op
        op.wake = self.wake
        op.advance_watermark = self.advance_watermark
        op.mark_idle = self.mark_idle
        op.schedule = self.schedule
        op.emit = self._emit_function()

    def _emit_function(self):
        targets = self.targets
        if not targets:
            return _discard
        if len(targets) > 1:

            def emit(batch, targets=targets):
                if batch:
                    for target, channel in targets:
                        target.deliver(channel, batch)

            return emit
        (target, channel), = targets
        if not isinstance(target, Instance):  # an exchange's sending end
            deliver = target.deliver

            def emit(batch, deliver=deliver, channel=channel):
                if batch:
                    deliver(channel, batch)

            return emit
        if target.chained:
            return target.chained_emit(channel)
        ready = target._ready

        # `deliver` inlined: the one-downstream case is most edges, and a
        # call less per hop is ~10% of activation latency
        # (benches/latency.py section 3).
        def emit(batch, target=target, channel=channel, ready=ready):
            if batch:
                target.pending.append((channel, batch))
                if not target.scheduled:
                    target.scheduled = True
                    ready(target)

        return emit

    # -- the activation -----------------------------------------------------

    def wake(self) -> None:
        if not self.scheduled and not self.ended:
            self.scheduled = True
            self._ready(self)

    def deliver(self, channel: int, payload) -> None:
        self.pending.append((channel, payload))
        if not self.scheduled:
            self.scheduled = True
            self._ready(self)

    def activate(self) -> None:
        self.scheduled = False
        if self.is_source:
            self._poll()
            return
        pending = self.pending
        self.pending = []
        on_batch = self.op.on_batch
        ports = self.ports
        payload = None
        i = 0
        try:
            while i < len(pending):
                channel, payload = pending[i]
                i += 1
                if self.arrived is not None and channel in self.arrived:
                    self.held.append((channel, payload))  # behind an epoch marker: wait
                elif isinstance(payload, list):
                    on_batch(ports[channel], payload)
                else:
                    self._progress(channel, payload)
                    if self.released:  # an alignment finished: what it held comes next
                        pending[i:i] = self.released
                        self.released = None
        except KernelError:
            raise
        except Exception as exc:
            raise self._handler_error(payload, exc) from exc

    def _progress(self, channel: int, payload) -> None:
        """A watermark, IDLE, an epoch marker or END arrived on `channel`
        (from the inbox, or on a chained edge)."""
        progress = self.progress
        if payload.__class__ is EpochMarker:
            self._channel_epoch(channel, payload.epoch)
            return
        if payload is END:
            change = progress.observe_end(channel)
        elif payload is IDLE:
            change = progress.observe_idle(channel)
        else:
            change = progress.observe_watermark(channel, payload)
        if change is not None:
            if change.reactivated is not None:  # downstream counts this instance again
                self._forward(change.reactivated)
            if change.advanced is not None:
                self._advance(change.advanced)
            if change.all_idle:
                # What the operator holds for others to complete (a
                # combiner's partials) goes out before they are told to
                # stop waiting for it.
                _call(self, "on_idle")
                if change.went_idle:
                    self._forward(IDLE)
        if payload is END:
            # An ended input has nothing more to deliver: that may complete
            # an alignment. After the frontier moved: the END came before
            # the marker on this channel, so what it released belongs to
            # this epoch, and the snapshot holds the frontier it reached
            # (the held channels' marks are still those from before their
            # marker).
            if self.arrived is not None and progress.open:
                self._check_aligned()
            if progress.open == 0:
                _call(self, "on_end")
                self._finish()

    def _advance(self, frontier: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= frontier:  # due event-time timers, in order
            when, _, data = heapq.heappop(timers)
            _call(self, "on_timer", when, data)
        _call(self, "on_watermark", frontier)
        self._forward(frontier)

    # -- epochs ---------------------------------------------------------------------

    def _channel_epoch(self, channel: int, epoch: int) -> None:
        if self.arrived is None:
            self.arrived = set()
            self.aligning = epoch
        self.arrived.add(channel)
        self._check_aligned()

    def _check_aligned(self) -> None:
        if self.arrived is None or len(self.arrived) < self.progress.open:
            return
        epoch = self.aligning
        self.arrived = self.aligning = None
        self.runtime.snapshot(self, epoch)
        self._forward(EpochMarker(epoch))
        if self.held:
            self.released, self.held = self.held, []

    def snapshot_part(self, operator_snapshot) -> tuple:
        """This instance's part of its kernel's snapshot."""
        frontier, marks, closed = self.progress.snapshot()
        if self.is_source:
            frontier = self.output_watermark
        return frontier, marks, closed, list(self.timers), operator_snapshot

    def restore_part(self, part: tuple):
        """Put back what `snapshot_part` made; returns the operator's snapshot."""
        frontier, marks, closed, timers, operator_snapshot = part
        if self.is_source:
            self.output_watermark = frontier
        else:
            self.progress.restore(frontier, marks, closed)
        # the sequence numbers are the crashed process's: number them
        # again, in their order, from this process's counter
        self.timers[:] = [(when, _next_sequence(), data) for when, _, data in sorted(
            timers, key=lambda timer: timer[:2])]
        return operator_snapshot

    def _handler_error(self, payload, exc: Exception) -> OperatorError:
        handler = "on_batch" if isinstance(payload, list) else "on_watermark"
        return OperatorError.wrap(self.name, _handler_name(self.op, handler), exc, has_record=False)

    # -- chaining -------------------------------------------------------------
    # An operator whose only input comes from an upstream whose only output
    # is this operator (a forward edge, same task class) is *chained*: the
    # upstream's emit calls its handlers directly, inside the upstream's
    # activation, as Flink chains operators on forward edges. Order is kept
    # (everything on the edge is handled synchronously, data and progress
    # alike); the chain is one activation for the budget and the stall
    # detector (which names the chain's head); a hop costs a function call
    # instead of a run-queue round trip (benches/latency.py section 3).

    def chained_emit(self, channel: int):
        on_batch = self.op.on_batch
        port = self.ports[channel]
        handler_error = self._handler_error

        def emit(batch):
            if batch:
                try:
                    on_batch(port, batch)
                except KernelError:
                    raise
                except Exception as exc:
                    raise handler_error(batch, exc) from exc

        return emit

    def receive(self, channel: int, payload) -> None:
        """Handle one payload now (progress on a chained edge)."""
        try:
            self._progress(channel, payload)
        except KernelError:
            raise
        except Exception as exc:
            raise self._handler_error(payload, exc) from exc

    def _poll(self) -> None:
        if self.ended:
            return
        if self.runtime.paused:
            self.runtime.park_source(self)
            return
        try:
            more = self.op.poll()
        except KernelError:
            raise
        except Exception as exc:
            handler = _handler_name(self.op, "poll")
            raise OperatorError.wrap(self.name, handler, exc, has_record=False) from exc
        if more:
            self.wake()
        elif more is False:
            self.advance_watermark(_INF)
            self._finish()

    # -- a source's output progress -------------------------------------------

    def schedule(self, event_time: float, data=None) -> None:
        """An event-time timer: `on_timer(event_time, data)` once the input
        watermark reaches `event_time` (timers fire in time order, ties in
        the order they were scheduled)."""
        heapq.heappush(self.timers, (event_time, _next_sequence(), data))

    def advance_watermark(self, watermark: float) -> None:
        """A source's output watermark moves forward (never back)."""
        if self.idle:
            self.idle = False
            self._forward(self.output_watermark)  # active again
        if watermark > self.output_watermark:
            self.output_watermark = watermark
            self._forward(watermark)
            self.runtime.source_watermark_moved()

    def mark_idle(self) -> None:
        """A source has had no data for a while: its watermark must not hold
        anyone back until it advances again."""
        if not self.idle and not self.ended:
            self.idle = True
            self._forward(IDLE)

    def _forward(self, payload) -> None:
        for target, channel in self.targets:
            if target.chained:
                target.receive(channel, payload)
            else:
                target.deliver(channel, payload)

    def _finish(self) -> None:
        self.ended = True
        self._forward(END)
        self.runtime.instance_ended(self)


_next_sequence = itertools.count().__next__


def _call(instance: Instance, handler: str, *args):
    """`instance.op.<handler>(*args)`; a failure names the step and handler."""
    try:
        return getattr(instance.op, handler)(*args)
    except KernelError:
        raise
    except Exception as exc:
        raise OperatorError.wrap(
            instance.name, _handler_name(instance.op, handler), exc, has_record=False
        ) from exc


def _handler_name(op: Operator, method: str) -> str:
    """Names a handler of a user operator in an OperatorError."""
    return f"{describe_function(type(op))}.{method}"


def _discard(batch) -> None:
    pass
