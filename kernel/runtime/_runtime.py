"""A dataflow graph instantiated on one kernel: inboxes, activations, progress.

Each graph node becomes an `_Instance`: the operator object, its inbox (a list
of `(channel, payload)` in arrival order) and its activation. Upstream
operators deliver into the inbox and mark the instance ready; the instance's
activation drains the inbox through the operator's handlers.

Progress is in-band. A channel's payload is a data batch (a `list`, or a
`TimedBatch` list with event timestamps), a watermark (a `float`), `IDLE` or
`END`. Because they share one ordered inbox, a watermark is seen after
exactly the data that preceded it. An instance's input frontier is the
minimum watermark over its channels (an ended channel counts as +inf, an idle
one is left out until it sends a watermark again); it only moves forward.
When it advances, due event-time timers fire (`on_timer`), then
`on_watermark` runs, and the new frontier is forwarded downstream. An
instance all of whose open inputs are idle is idle itself and says so
downstream. When every channel has ended, `on_end` runs and `END` is
forwarded. The run is over when every instance has ended: nothing polls.
"""

from __future__ import annotations

import heapq
import itertools
import math
import pickle

from kernel.dataflow._errors import (
    UNHASHABLE_ACROSS_KERNELS,
    UNHASHABLE_KEY,
    UNPICKLABLE_RECORD,
    KernelError,
    OperatorError,
    describe_function,
    is_unhashable,
)
from kernel.dataflow._graph import Graph, Node
from kernel.dataflow._operator import Operator
from kernel.net import IDLE, EpochMarker
from kernel.net._codec import UnpicklableRecord
from kernel.runtime._epochs import ENDED, EpochTracker

END = "<end of input>"  # a str: never a list, never a float
_FINAL_WITHOUT_EPOCHS = 2**62  # commit() at the end of a run without epochs: every epoch
_INF = math.inf


class _Instance:
    __slots__ = (
        "_ready",
        "aligning",
        "arrived",
        "chained",
        "channel_idle",
        "channel_ports",
        "channel_watermarks",
        "closed_channels",
        "ended",
        "frontier",
        "held",
        "idle",
        "idle_channels",
        "index",
        "is_source",
        "name",
        "op",
        "open_channels",
        "pending",
        "released",
        "runtime",
        "scheduled",
        "targets",
        "task_class",
        "timers",
    )

    def __init__(self, node: Node, op: Operator, runtime: Runtime) -> None:
        self.name = node.label
        self.op = op
        self.runtime = runtime
        self.task_class = op.task_class
        self.is_source = node.is_source
        self.pending: list = []
        self.scheduled = False
        self.channel_ports: list[int] = []
        self.channel_watermarks: list[float] = []
        self.channel_idle: list[bool] = []
        self.closed_channels: set[int] = set()  # channels whose END has come
        self.idle_channels = 0
        self.idle = False  # every open input is idle (so this one says IDLE downstream)
        self.timers: list = []  # heap of (event time, sequence, data) for on_timer
        self.index = -1  # position in the runtime's instances
        # epoch alignment: the channels that delivered the marker of epoch
        # `aligning` (None: not aligning), what came behind it on them, and
        # what to handle next once the alignment is done
        self.aligning: int | None = None
        self.arrived: set | None = None
        self.held: list = []
        self.released: list | None = None
        self.open_channels = 0
        self.frontier = -_INF
        self.ended = False
        self.targets: list[tuple[_Instance, int]] = []
        self.chained = False  # runs inside its upstream's activation (see Runtime)
        self._ready = runtime.kernel.ready_function(self.task_class)

    # -- wiring -------------------------------------------------------------

    def add_channel(self, port: int) -> int:
        self.channel_ports.append(port)
        self.channel_watermarks.append(-_INF)
        self.channel_idle.append(False)
        self.open_channels += 1
        return len(self.channel_ports) - 1

    def install_helpers(self) -> None:
        """Give the operator its emit/wake/advance_watermark."""
        op = self.op
        targets = self.targets
        if not targets:
            op.emit = _discard
        elif len(targets) == 1:
            (target, channel), = targets
            if not isinstance(target, _Instance):
                deliver = target.deliver

                def emit(batch, deliver=deliver, channel=channel):
                    if batch:
                        deliver(channel, batch)

                op.emit = emit
                op.wake = self.wake
                op.advance_watermark = self.advance_watermark
                op.mark_idle = self.mark_idle
                op.schedule = self.schedule
                return
            if target.chained:
                op.emit = target.chained_emit(channel)
                op.wake = self.wake
                op.advance_watermark = self.advance_watermark
                op.mark_idle = self.mark_idle
                op.schedule = self.schedule
                return
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

            op.emit = emit
        else:

            def emit(batch, targets=targets):
                if batch:
                    for target, channel in targets:
                        target.deliver(channel, batch)

            op.emit = emit
        op.wake = self.wake
        op.advance_watermark = self.advance_watermark
        op.mark_idle = self.mark_idle
        op.schedule = self.schedule

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
        ports = self.channel_ports
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
        """A watermark, IDLE or END arrived on `channel` (inbox or chained edge)."""
        if payload is END:
            self._channel_ended(channel)
        elif payload is IDLE:
            self._channel_went_idle(channel)
        elif payload.__class__ is EpochMarker:
            self._channel_epoch(channel, payload.epoch)
        else:
            self._channel_watermark(channel, payload)

    # -- epochs ---------------------------------------------------------------------

    def _channel_epoch(self, channel: int, epoch: int) -> None:
        if self.arrived is None:
            self.arrived = set()
            self.aligning = epoch
        self.arrived.add(channel)
        self._check_aligned()

    def _check_aligned(self) -> None:
        if self.arrived is None or len(self.arrived) < self.open_channels:
            return
        epoch = self.aligning
        self.arrived = self.aligning = None
        self.runtime.snapshot(self, epoch)
        self._forward(EpochMarker(epoch))
        if self.held:
            self.released, self.held = self.held, []

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
        port = self.channel_ports[channel]
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

    # -- progress -------------------------------------------------------------

    def _channel_watermark(self, channel: int, watermark: float) -> None:
        marks = self.channel_watermarks
        if self.channel_idle[channel]:
            self.channel_idle[channel] = False
            self.idle_channels -= 1
            if self.idle:  # active again: downstream counts this input again
                self.idle = False
                self._forward(self.frontier)
        if watermark > marks[channel]:
            marks[channel] = watermark
            self._advance_frontier(self._active_minimum())

    def _channel_went_idle(self, channel: int) -> None:
        if self.channel_idle[channel] or self.channel_watermarks[channel] == _INF:
            return
        self.channel_idle[channel] = True
        self.idle_channels += 1
        if self.idle_channels == self.open_channels:
            self._all_inputs_idle()
        else:
            self._advance_frontier(self._active_minimum())

    def _all_inputs_idle(self) -> None:
        # As Flink's watermark valve: with every input idle, nothing holds
        # the frontier back but the idle inputs' own last watermarks, so it
        # moves to the largest of them (events an input sends after that,
        # behind the frontier, are late); then this instance is idle too.
        marks = [m for m, idle in zip(self.channel_watermarks, self.channel_idle) if idle]
        self._advance_frontier(max(marks))
        # What the operator holds for others to complete (a combiner's
        # partials) goes out before they are told to stop waiting for it.
        _call(self, "on_idle")
        if not self.idle:
            self.idle = True
            self._forward(IDLE)

    def _active_minimum(self) -> float:
        if not self.idle_channels:
            return min(self.channel_watermarks)
        return min(
            mark for mark, idle in zip(self.channel_watermarks, self.channel_idle) if not idle
        )

    def _channel_ended(self, channel: int) -> None:
        if self.channel_idle[channel]:
            self.channel_idle[channel] = False
            self.idle_channels -= 1
        self.channel_watermarks[channel] = _INF
        self.closed_channels.add(channel)
        self.open_channels -= 1
        if self.open_channels and self.idle_channels == self.open_channels:
            self._all_inputs_idle()
        else:
            self._advance_frontier(self._active_minimum())
        # An ended input has nothing more to deliver: that may complete an
        # alignment. After the frontier moved: the END came before the marker
        # on this channel, so what it released belongs to this epoch, and the
        # snapshot holds the frontier it reached (the held channels' marks
        # are still those from before their marker).
        if self.arrived is not None and self.open_channels:
            self._check_aligned()
        if self.open_channels == 0:
            _call(self, "on_end")
            self._finish()

    def _advance_frontier(self, frontier: float) -> None:
        if frontier > self.frontier:
            self.frontier = frontier
            timers = self.timers
            while timers and timers[0][0] <= frontier:  # due event-time timers, in order
                when, _, data = heapq.heappop(timers)
                _call(self, "on_timer", when, data)
            _call(self, "on_watermark", frontier)
            self._forward(frontier)

    def schedule(self, event_time: float, data=None) -> None:
        """An event-time timer: `on_timer(event_time, data)` once the input
        watermark reaches `event_time` (timers fire in time order, ties in
        the order they were scheduled)."""
        heapq.heappush(self.timers, (event_time, _next_sequence(), data))

    def advance_watermark(self, watermark: float) -> None:
        """A source's output watermark moves forward (never back)."""
        if self.idle:
            self.idle = False
            self._forward(self.frontier)  # active again
        if watermark > self.frontier:
            self.frontier = watermark
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


def _call(instance: _Instance, handler: str, *args):
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


class _ExchangeOutput:
    """The sending end of an exchange edge on one kernel: splits each batch
    of `(key, value)` pairs by owner; the local share goes straight into the
    consumer's inbox, the rest to the transport. Progress is broadcast."""

    chained = False

    def __init__(self, edge_id, upstream, local, local_channel, partitioner, transport) -> None:
        self.edge_id = edge_id
        self.upstream = upstream
        self.local = local
        self.local_channel = local_channel
        self.partitioner = partitioner
        self.transport = transport
        self.index = transport.index
        self.peers = transport.peers

    def deliver(self, _channel: int, payload) -> None:
        transport, edge_id = self.transport, self.edge_id
        if isinstance(payload, list):
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
                            transport.send_batch(dest, edge_id, part)
                        except UnpicklableRecord as exc:
                            raise self._unpicklable(exc) from exc.__cause__
            return
        self.local.deliver(self.local_channel, payload)
        wire = None if payload is END else payload  # the transport's end of input
        for dest in range(self.peers):
            if dest != self.index:
                transport.send_progress(dest, edge_id, wire)


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


class Runtime:
    """The instances of one graph on one kernel.

    With a `transport` (several kernels), exchange edges become one channel
    per source kernel on the consuming instance: its own kernel's share
    arrives by list, the others' through the transport, and the input
    frontier is the minimum over all of them.
    """

    def __init__(self, graph: Graph, kernel, transport=None, coordinator=None) -> None:
        self.graph = graph
        self.kernel = kernel
        self.transport = transport
        # epochs (when a state_dir is given): the coordinator makes this
        # kernel's snapshots durable and calls commit() when an epoch is
        # complete everywhere (kernel/_coordinate.py)
        self.coordinator = coordinator
        self.epochs: EpochTracker | None = None
        self.instances: list[_Instance] = []
        self._sources: list[_Instance] = []
        self._live = 0
        self._remote_inboxes: dict[tuple[int, int], tuple[_Instance, int]] = {}
        self._partial_for: dict[int, int] = {}  # partial instance index -> its node's id
        self._exchange_edges = 0
        self.paused = False  # sources wait while the transport is backed up
        self._paused_sources: list[_Instance] = []

    def _build(self) -> None:
        """Instantiate every operator and wire the inboxes (on the running kernel)."""
        graph, transport = self.graph, self.transport
        exchanging = transport is not None and transport.peers > 1
        for node in graph.nodes:
            factory = node.factory
            if exchanging and self._combines(node):
                factory = node.combiner.merge
            self.instances.append(self._instantiate(node, factory))
        partitioner = None
        for node, instance in zip(graph.nodes, self.instances):
            for edge in node.inputs:
                upstream = self.instances[edge.source.id]
                if not (edge.exchange and exchanging):
                    upstream.targets.append((instance, instance.add_channel(edge.port)))
                    continue
                if self._combines(node):
                    # the partial aggregate runs on this kernel, before the exchange
                    partial = self._instantiate(
                        Node(len(self.instances), f"{node.name}, partial", node.combiner.partial),
                        node.combiner.partial,
                        label=f"{node.label}, partial before the exchange",
                    )
                    self.instances.append(partial)
                    self._partial_for[len(self.instances) - 1] = node.id
                    upstream.targets.append((partial, partial.add_channel(0)))
                    upstream = partial
                if partitioner is None:
                    from kernel.net import Partitioner

                    partitioner = Partitioner(transport.peers)
                edge_id = self._exchange_edges
                self._exchange_edges += 1
                local_channel = None
                for source in range(transport.peers):
                    channel = instance.add_channel(edge.port)
                    if source == transport.index:
                        local_channel = channel
                    else:
                        self._remote_inboxes[(edge_id, source)] = (instance, channel)
                output = _ExchangeOutput(edge_id, upstream, instance, local_channel, partitioner, transport)
                upstream.targets.append((output, 0))
        for instance in self.instances:
            if len(instance.targets) == 1:
                target, _ = instance.targets[0]
                if isinstance(target, _Instance):
                    target.chained = (
                        len(target.channel_ports) == 1 and target.task_class == instance.task_class
                    )
        for instance in self.instances:
            instance.install_helpers()
        self._sources = [i for i in self.instances if i.is_source]

    def _instantiate(self, node: Node, factory, label: str | None = None) -> _Instance:
        op = factory()
        label = label or node.label
        if not isinstance(op, Operator):
            raise TypeError(f"{label}: factory returned {op!r}, not an Operator")
        op.name = label
        op.context = self.kernel.context
        instance = _Instance(node, op, self)
        instance.name = label
        return instance

    @staticmethod
    def _combines(node: Node) -> bool:
        return node.combiner is not None and len(node.inputs) == 1 and node.inputs[0].exchange

    def start(self) -> None:
        """Build, open every operator and schedule the sources."""
        self._build()
        for instance in self.instances:
            _call(instance, "open", self.kernel.context)
        for index, instance in enumerate(self.instances):
            instance.index = index
        self._live = len(self.instances)
        if self._live:
            self.kernel.hold()
        ended_before = 0
        if self.coordinator is not None:
            ended_before = self._start_epochs()
        else:
            self.commit(0)  # nothing restored: output an earlier run held back is stale
        if self.transport is not None:
            self.transport.start(
                ready=self.kernel.ready_function(),
                loop=self.kernel.loop,
                deliver=self._deliver_remote,
                ends_expected=self._exchange_edges * (self.transport.peers - 1) - ended_before,
                hold=self.kernel.hold,
                release=self.kernel.release,
                on_backpressure=self._backpressure,
            )
            if self._live == 0:
                self.transport.finish_sending()
        for source in self._sources:
            source.wake()

    # -- epochs ---------------------------------------------------------------------

    def _start_epochs(self) -> int:
        """Set up epochs, restoring a snapshot if the coordinator has one;
        returns how many remote channels had already ended in it."""
        coordinator = self.coordinator
        coordinator.attach(self)
        for source in self._sources:
            op = getattr(source.op, "inner", source.op)  # an event-time wrapper's source
            if type(op).on_epoch is Operator.on_epoch and not op.__dict__.get("_keyed_states"):
                self.kernel.logger.warning(
                    "%s keeps no position (no on_epoch/restore): after a crash a resumed run "
                    "reads it again from its start", source.name)
        self.epochs = EpochTracker(len(self.instances), coordinator.durable, coordinator.finished,
                                   coordinator.first_epoch)
        ended_remote = 0
        if coordinator.snapshot is not None:
            self._restore(pickle.loads(coordinator.snapshot))
            ended_remote = sum(
                1 for instance, channel in self._remote_inboxes.values()
                if instance.ended or channel in instance.closed_channels
            )
        coordinator.restored(self)  # also on a fresh start: a crashed run's leftovers go
        if self._live and any(not s.ended for s in self._sources):
            self.kernel.call_later(coordinator.interval, self._next_epoch)
        return ended_remote

    def _restore(self, parts: dict) -> None:
        for index, part in parts.items():
            instance = self.instances[index]
            if part == ENDED:
                instance.ended = True
                self._live -= 1
                self.epochs.ended(index)
                continue
            frontier, marks, closed, timers, snapshot = pickle.loads(part)
            instance.frontier = frontier
            instance.channel_watermarks[:] = marks
            instance.closed_channels = set(closed)
            instance.open_channels = len(marks) - len(closed)
            # the sequence numbers are the crashed process's: number them
            # again, in their order, from this process's counter
            instance.timers[:] = [(when, _next_sequence(), data) for when, _, data in sorted(
                timers, key=lambda timer: timer[:2])]
            _call(instance, "restore", snapshot)
        if self._live == 0:
            self.kernel.release()

    def _next_epoch(self) -> None:
        live = [source for source in self._sources if not source.ended]
        if not live or self.epochs is None:
            return
        epoch = self.epochs.take_epoch()
        for source in live:
            self.snapshot(source, epoch)
            source._forward(EpochMarker(epoch))
        self.kernel.call_later(self.coordinator.interval, self._next_epoch)

    def snapshot(self, instance: _Instance, epoch: int) -> None:
        """`instance` has aligned on `epoch`: its part of this kernel's snapshot."""
        if self.epochs is None:
            return
        snapshot = _call(instance, "on_epoch", epoch)
        part = (instance.frontier, list(instance.channel_watermarks), sorted(instance.closed_channels),
                list(instance.timers), snapshot)
        self.epochs.part(instance.index, epoch, part)

    def commit(self, epoch: int) -> None:
        """`epoch` is complete on every kernel: operators may publish it."""
        for instance in self.instances:
            _call(instance, "on_commit", epoch)

    def _deliver_remote(self, edge_id: int, source: int, payload) -> None:
        instance, channel = self._remote_inboxes[(edge_id, source)]
        instance.deliver(channel, END if payload is None else payload)

    def _backpressure(self, blocked: bool) -> None:
        self.paused = blocked
        if not blocked:
            paused, self._paused_sources = self._paused_sources, []
            for source in paused:
                source.wake()

    def park_source(self, source: _Instance) -> None:
        self._paused_sources.append(source)

    def instance_ended(self, instance: _Instance) -> None:
        if self.epochs is not None:
            self.epochs.ended(instance.index)
        elif self._live == 1:
            self.commit(_FINAL_WITHOUT_EPOCHS)  # no epochs: held-back output goes out at the end
        self._live -= 1
        if self._live == 0:
            self.kernel.context.watermark = _INF
            if self.transport is not None:
                self.transport.finish_sending()
            self.kernel.release()

    def source_watermark_moved(self) -> None:
        self.kernel.context.watermark = min(s.frontier for s in self._sources)

    def results(self) -> dict[int, object]:
        """Each node's `result()`; a partial aggregate's counts are added to
        its node's (both report `{"late": n}`)."""
        out = {
            node.id: value
            for node, instance in zip(self.graph.nodes, self.instances)
            if (value := instance.op.result()) is not None
        }
        for index, node_id in self._partial_for.items():
            value = self.instances[index].op.result()
            if value is not None:
                mine = out.get(node_id) or {"late": 0}
                out[node_id] = {"late": mine["late"] + value["late"]}
        return out
