"""A dataflow graph instantiated on one kernel.

`Runtime` builds an `Instance` (`_instance.py`) per graph node, wires their
inboxes, and talks to the other kernels through one transport
(`kernel.net`'s protocol: a `LocalTransport` when this is the only kernel,
rings or links otherwise). An edge stays inside the kernel, a plain list
handed to the consumer's inbox, except an exchange edge on several kernels:
it becomes one channel per source kernel on the consuming instance (its own
kernel's share by list, the others' through the transport), and the input
frontier is the minimum over all of them. With a combiner, the aggregate's
partial half runs before the exchange on every kernel.

Epochs (with a `state_dir`): every `interval` the sources inject an epoch
marker; instances snapshot when it has come on all their inputs; the
coordinator (`_coordinate.py`) makes this kernel's snapshots durable and
calls `commit(epoch)` once an epoch is complete on every kernel.
"""

from __future__ import annotations

import bisect
import math
from functools import partial

from kernel.dataflow import EVERY_EPOCH
from kernel.dataflow._errors import UNRESTORABLE_RECORD, OperatorError
from kernel.dataflow._graph import Graph, Node
from kernel.dataflow._key_groups import default_key_groups, owner_table
from kernel.dataflow._operator import Operator
from kernel.net import LocalTransport, Partitioner

from . import _blocked_step
from ._epochs import ENDED, Ended, EpochTracker, pickled_part, snapshot_parts, unpickled_part
from ._exchange import BroadcastOutput, ExchangeOutput, watermark_pacer
from ._instance import END, Instance, _call, _is_batch, _not_a_batch
from ._loops import INSTANCE_CLASSES, Entry, back_edge, wire_loops
from ._rescale import Rescaled, restore_rescaled

_INF = math.inf
# Operator fusion on chained edges (`_fuse`); tests turn it off to compare.
FUSION = True
# streamkernel_epoch_seconds's buckets (seconds from an epoch's start to its snapshot)
EPOCH_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
# the dashboard's timeline: the last epochs a kernel snapshotted (epoch, wall time, seconds)
EPOCH_LOG = 64


_MAX_CHAINED = 50  # chained hops in a row (a hop nests ~4 Python frames; the limit is 1,000)


class Runtime:
    """The instances of one graph on one kernel."""

    def __init__(self, graph: Graph, kernel, transport=None, coordinator=None, metrics: bool = False) -> None:
        self.graph = graph
        self.kernel = kernel
        self.transport = transport if transport is not None else LocalTransport()
        self.coordinator = coordinator  # None: no epochs
        # Keys (and the bounded sources' records) are partitioned by key
        # group; a run with a state_dir keeps the count its store was made with.
        peers = self.transport.peers
        self.key_groups = getattr(coordinator, "key_groups", None) or default_key_groups(peers)
        kernel.context.key_groups = self.key_groups
        self.epochs: EpochTracker | None = None
        self.instances: list[Instance] = []
        self._sources: list[Instance] = []
        self._live = 0
        self._remote_inboxes: dict[tuple[int, int], tuple[Instance, int]] = {}
        # when the exchange edges' watermarks go to the other kernels (past two: _exchange.py)
        self._pacer = watermark_pacer(self.transport, kernel)
        self._partial_for: dict[int, int] = {}  # partial instance index -> its node's id
        # (id(consumer), input channel) -> the instance feeding it (here, or its twin on another kernel)
        self.upstream_of: dict[tuple[int, int], Instance] = {}
        self.paused = False  # sources wait while the transport is backed up or an operator holds them
        self._transport_blocked = False
        # instances that called pause_input(True) (an asynchronous sink with its buffer full)
        self._input_holders: set = set()
        # the kernel's own work spread over ticks (`hold_input(pacing=True)`): not backpressure
        self._pacing_holders: set = set()
        self._source_holders: set = set()  # loops whose entries are full (hold_sources)
        # the rest of an output to go on in pieces, waiting for room in the
        # transport (`wait_for_room`): Unfinished -> its instance
        self._room_waiters: dict = {}
        self._paused_sources: list[Instance] = []
        self.metrics = metrics  # count records per batch for `metrics_snapshot`
        self.backpressured = 0.0  # seconds the sources were paused by the transport
        self._paused_at: float | None = None  # metrics: when the backpressure under way began
        self._epoch_started: dict[int, float] = {}  # metrics: when each epoch began here
        self._epoch_buckets = [0] * (len(EPOCH_BUCKETS) + 1)  # per bucket (the last: above them all)
        self._epoch_seconds = 0.0
        self.snapshot_bytes: int | None = None  # the last snapshot this kernel took
        self._epoch_log: list[list] = []  # [epoch, wall time at its snapshot, seconds], the last EPOCH_LOG
        self.complete: int | None = None  # the last epoch complete on every kernel (`commit`)
        self._epoch_due = False  # the next epoch's time came while too far ahead (`_next_epoch`)
        if isinstance(getattr(kernel.logger, "extra", None), dict):  # structured logs name the job
            kernel.logger.extra["job"] = graph.name
        self.nested_time = [0.0]  # metrics: see Instance.count_records
        self.observers: list = []  # metrics of this kernel's transport: () -> {"ring_used_bytes": ...}
        self.loops: dict = {}  # loop id -> its LoopControl on this kernel (_loops.py)
        self._held: list | None = None  # what open() emitted, while the steps open (`_hold_during_open`)

    # -- wiring -------------------------------------------------------------------

    def _build(self) -> None:
        """Instantiate every operator and wire the inboxes (on the running kernel)."""
        graph, transport = self.graph, self.transport
        graph.check_cycles()
        exchanging = transport.peers > 1
        for node in graph.nodes:
            factory = node.combiner.merge if exchanging and self._combines(node) else node.factory
            self.instances.append(self._instantiate(node, factory))
        partitioner = (Partitioner(transport.peers, owner_table(transport.peers, self.key_groups))
                       if exchanging else None)
        self.partitioner = partitioner
        for node, instance in zip(graph.nodes, self.instances):
            for edge in node.inputs:
                upstream = self.instances[edge.source.id]
                if edge.feedback:  # a loop's back edge (_loops.py)
                    upstream.targets.append((back_edge(self, instance, edge.port), 0))
                    continue
                if edge.broadcast and exchanging:  # (Stream.broadcast: every record to every kernel)
                    output = self._exchange(edge.port, upstream, instance, None, BroadcastOutput)
                    upstream.targets.append((output, 0))
                    continue
                if not (edge.exchange and exchanging):
                    upstream.targets.append((instance, self._add_channel(instance, edge.port, upstream)))
                    continue
                if self._combines(node):
                    upstream = self._partial_before_exchange(node, upstream)
                upstream.targets.append((self._exchange(edge.port, upstream, instance, partitioner), 0))
        if graph.loops:
            nodes = [*graph.nodes, *(graph.nodes[self._partial_for[i]]
                                     for i in range(len(graph.nodes), len(self.instances)))]
            self.loops = wire_loops(graph, self.instances, nodes)
        hops: dict[int, int] = {}  # chained hops before an instance (upstreams come first)
        for instance in self.instances:
            if len(instance.targets) == 1:
                target, _ = instance.targets[0]
                if isinstance(target, Instance):
                    chained = len(target.ports) == 1 and target.task_class == instance.task_class
                    # A chained hop is a nested call: a chain is cut every
                    # _MAX_CHAINED hops (the next step runs in an activation
                    # of its own), or a long one overflows Python's stack (a
                    # review: 400 maps raised RecursionError at the 245th)
                    depth = hops.get(id(instance), 0) + 1 if chained else 0
                    target.chained = chained and depth <= _MAX_CHAINED
                    hops[id(target)] = depth if target.chained else 0
        if FUSION:
            self._fuse()
        for instance in self.instances:
            instance.user_output_in_pieces()
        if self.metrics:
            for instance in self.instances:
                instance.count_records()
        for instance in self.instances:
            instance.install_helpers()
        self._sources = [i for i in self.instances if i.is_source]
        self._mark_fed_from_afar()
        self._mark_sending_afar()
        if any(control.faucet for control in self.loops.values()):
            self._feeding_faucets()

    def _feeding_faucets(self) -> None:
        """Each source's `feeds`: the instances on this kernel between it
        and a loop's entry with max_in_flight, and that entry. A source
        polls again only once they have handed on all it emitted, so the
        entry counts each poll's records (and pauses the sources, if they
        fill it) before the next poll: what the sources emit past the bound
        is one poll's records each, however many steps lie in between.
        (What goes to another kernel is not waited for: `check_room`.)"""
        leads: dict[int, bool] = {}  # id(instance) -> it leads to such an entry

        def leads_to(instance) -> bool:
            key = id(instance)
            if key not in leads:
                leads[key] = False  # (no cycle outside a loop; the back edge is no Instance)
                if isinstance(instance, Entry):  # the way ends at a loop's entry
                    leads[key] = instance.control.faucet
                else:
                    found = [leads_to(to) for to in _local_targets(instance)]
                    leads[key] = any(found)  # (every target visited: the walk below reads them all)
            return leads[key]

        for source in self._sources:
            if not leads_to(source):
                continue
            source.feeds = _upstream_first(source, leads)

    def _mark_fed_from_afar(self) -> None:
        """`Instance.fed_from_afar`: whether what other kernels send may
        reach the instance's inbox (an exchange's consumer, what follows
        it, and a loop's members, whose rounds come that way too). The
        others wait for room in the transport with the kernel's reading
        going on (`wait_for_room`): nothing read piles up behind them; of
        these, only those whose output crosses (`_mark_sending_afar`)."""
        fed = [instance for instance, _ in self._remote_inboxes.values()]
        fed += [instance for instance in self.instances if instance.loop is not None]
        while fed:
            instance = fed.pop()
            if not instance.fed_from_afar:
                instance.fed_from_afar = True
                fed += _local_targets(instance)

    def _mark_sending_afar(self) -> None:
        """`Instance.sends_afar`: an instance fed from afar whose output
        reaches other kernels (an exchange on its way on this kernel). It
        takes a batch only while the transport has room, and waits for
        room otherwise (`wait_for_room`), with the kernel's reading going
        on: what it made of a batch from the other kernels went on
        whatever the room (a flat_map making 20 records of 10 KB of each,
        for a slow kernel: all of it in the overflow, 540 MB for 16,000
        records). What reaches it meanwhile waits in its inbox as it
        came, before the step (20 times smaller there), up to INBOX_BYTES
        (`Instance._inbox_small`): past it, the step takes its next batch
        anyway (a step whose input is larger than its output).

        No two kernels wait on each other for ever: a kernel waits for room
        only till the kernels it sends to read their rings, and no kernel
        stops reading because one of its steps waits for room (a step that
        waits lets go of the kernel's reading: `Instance._wait_for_room`).
        The kernel's other holds on its reading (an output going on in
        pieces, an inbox left in part, an asynchronous sink's buffer) end
        after work of its own, a piece a tick, or turn into a wait for
        room, which lets go of them (every way an instance starts or goes
        on waiting passes through `Instance._wait_for_room`, and a step
        waiting behind the pieces of the step fused after it lets go of its
        inbox's hold too: `Instance._behind_fused`). So every
        ring is read in the end, every overflow drains, and every waiter
        wakes (`backpressure`). Across processes the same: a relay takes
        frames from a kernel's ring as its link's credit allows, which
        comes back once they are in the receiving kernel's ring, which
        that kernel reads."""
        if self.transport.peers < 2:
            return
        feeders: dict[int, list[Instance]] = {}  # id(instance) -> the instances handing it records here
        reaching: list[Instance] = []
        for instance in self.instances:
            for target, _ in instance.targets:
                if isinstance(target, ExchangeOutput):
                    reaching.append(instance)
                    nexts = [target.local]
                elif isinstance(target, Instance):
                    nexts = [target]
                else:  # a loop's back edge: its records go to the loop's head here
                    head = getattr(target, "head", None)
                    nexts = [head] if isinstance(head, Instance) else []
                for to in nexts:
                    feeders.setdefault(id(to), []).append(instance)
        seen: set[int] = set()
        while reaching:
            instance = reaching.pop()
            if id(instance) in seen:
                continue
            seen.add(id(instance))
            instance.sends_afar = instance.fed_from_afar
            reaching += feeders.get(id(instance), ())

    def _fuse(self) -> None:
        """Offer each chained operator its upstream (`Operator.fuse_upstream`):
        a keyed aggregate right after `key_by` counts keys straight from the
        records, with no pairs built (benches/pipelines.py word count), and
        stateless steps run as one comprehension. From the end of each
        chain back, so a step offered its upstream has taken (or been taken
        by) the steps after it already. A run that counts records per step
        (metrics) fuses a chain with at most one step whose record counts
        differ (a filter, a flat_map): counts are per batch, and a fused
        chain has no batch between its steps, but the records before that
        step are the chain's input and those after it its output
        (`Instance.count_records`); between two such steps they are not
        known, so those stay apart."""
        for instance in reversed(self.instances):
            if instance.is_source or len(instance.targets) != 1:
                continue
            target, _ = instance.targets[0]
            if isinstance(target, Instance) and target.chained:
                handler = target.op.fuse_upstream(instance.op)
                if handler is not None and self.metrics and getattr(handler, "changes_counts_at", None) == -1:
                    instance.op.__dict__.pop("_fusion", None)
                    continue
                if handler is not None:
                    instance.op.on_batch = handler
                    instance.fused_into = target

    def _partial_before_exchange(self, node: Node, upstream: Instance) -> Instance:
        """The combiner's partial aggregate, on this kernel, before the exchange."""
        partial = self._instantiate(
            Node(len(self.instances), f"{node.name}, partial", node.combiner.partial, loop=node.loop),
            node.combiner.partial,
            label=f"{node.label}, partial before the exchange",
        )
        self.instances.append(partial)
        self._partial_for[len(self.instances) - 1] = node.id
        upstream.targets.append((partial, self._add_channel(partial, 0, upstream)))
        return partial

    def _exchange(self, port: int, upstream: Instance, consumer: Instance, partitioner,
                  output: type[ExchangeOutput] = ExchangeOutput) -> ExchangeOutput:
        """One channel of the transport; on the consumer, an input channel per source kernel."""
        transport = self.transport
        channel = transport.allocate()
        local_channel = None
        for source in range(transport.peers):
            inbox = self._add_channel(consumer, port, upstream)
            if source == transport.index:
                local_channel = inbox
            else:
                self._remote_inboxes[(channel, source)] = (consumer, inbox)
        return output(channel, upstream, consumer, local_channel, partitioner, transport, self.kernel,
                      self._pacer)

    def _add_channel(self, consumer: Instance, port: int, upstream: Instance) -> int:
        """An input channel of `consumer` fed by `upstream` (on some kernel)."""
        inbox = consumer.add_channel(port)
        self.upstream_of[(id(consumer), inbox)] = upstream
        return inbox

    def _instantiate(self, node: Node, factory, label: str | None = None) -> Instance:
        op = factory()
        label = label or node.label
        if not isinstance(op, Operator):
            raise TypeError(f"{label}: factory returned {op!r}, not an Operator")
        op.name = label
        op.context = self.kernel.context
        instance = INSTANCE_CLASSES.get(node.role, Instance)(node, op, self)
        instance.name = label
        return instance

    @staticmethod
    def _combines(node: Node) -> bool:
        return node.combiner is not None and len(node.inputs) == 1 and node.inputs[0].exchange

    # -- running ------------------------------------------------------------------

    def start(self) -> None:
        """Build, open every operator and schedule the sources."""
        self._build()
        self.kernel.context.snapshots = self.coordinator is not None
        held, saved = self._hold_during_open()
        try:
            for instance in self.instances:
                _call(instance, "open", self.kernel.context)
            opened = len(held)  # (what restore() emits comes after: never handed on before)
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
        finally:
            self._held = None
            for op, helpers, holders in saved:
                for name, holder in zip(helpers, holders):
                    if op.__dict__.get(name) is holder:  # (one the operator set itself in open stays)
                        setattr(op, name, helpers[name])
        self.transport.start(self.kernel, self, ended_before)
        restored = self.coordinator is not None and self.coordinator.snapshot is not None
        # each step's in the order it made them, the steps downstream first (`_hold_during_open`)
        for at, (_, records, call) in sorted(enumerate(held), key=self._downstream_first):
            if not (records and restored and at < opened):
                call()
        if self._live == 0:
            self.transport.finish_sending()
        for source in self._sources:
            source.wake()

    def _downstream_first(self, entry: tuple) -> float:
        """The order `start` hands on what was held while the steps opened
        (`(at, (place, ...))`, sorted stably): the graph's last step's
        first. The graph's steps are in its order, upstream first; a
        combiner's partial half, appended after them, goes just before the
        step it feeds through the exchange (its place had it hand on first,
        before the steps downstream of it)."""
        place = entry[1][0]
        fed = self._partial_for.get(place)
        return -(place if fed is None else fed - 0.5)

    def blocked_step(self, frames: list, within: str) -> tuple[str, str] | None:
        """The step and function a kernel's start blocked in `start` is in
        (a step's open waiting on a connection), and the step's name, for
        the watchdog's report (`_blocked_step`)."""
        return _blocked_step.blocked_step(frames, within)

    def _hold_during_open(self) -> tuple[list, list]:
        """What the operators emit (and sources say of their watermark) in
        `open()`, or `restore()`, waits till every step is open and
        restored, then goes on before anything else: at once it went to
        steps not open yet (a chained step's on_batch ran before its open,
        an exchange's before the transport started). Each step's goes on in
        the order it was made, and a step's before its upstream steps'
        (the graph's order reversed, `_downstream_first`), so
        that what a step emitted in open goes on before what it hands on of
        theirs (upstream first, a header a step emits in open came after
        its output for the records the step before it emitted in open).
        A run resumed from a snapshot does not hand open's records on
        again: every epoch marker came after them, so the state it
        restores holds them already (a crash-free run counted them once);
        what `restore()` emits goes on (it was never handed on). Returns
        the list the calls are kept in, in order, as `(the step's place in
        self.instances, records, call)`, and each operator's own helpers,
        to put back once the phase ends (unless the operator replaced one
        in open). A holding helper kept past it (by a task started in open,
        or an emit of the operator's own wrapping it) goes straight to the
        operator's own."""
        self._held = held = []
        saved = []
        for place, instance in enumerate(self.instances):
            op = instance.op
            helpers = {name: getattr(op, name) for name in ("emit", "advance_watermark", "mark_idle")}
            holders = _held_helpers(self, helpers, place)
            saved.append((op, helpers, holders))
            op.emit, op.advance_watermark, op.mark_idle = holders
        return held, saved

    # The transport's receiver (kernel.net's protocol).

    def deliver(self, channel: int, source: int, payload) -> None:
        instance, inbox = self._remote_inboxes[(channel, source)]
        instance.deliver(inbox, END if payload is None else payload)

    def undecodable(self, channel: int, source: int, exc: Exception) -> OperatorError | None:
        """A batch from kernel `source` on `channel` that could not be
        decoded (a record whose pickle does not rebuild it): the error names
        the step whose output crossed, as one that cannot be pickled does
        (`ExchangeOutput._unpicklable`); it named only the `ring reader`.
        None for a channel this kernel does not know (a frame damaged: its
        own error then, not a KeyError here)."""
        found = self._remote_inboxes.get((channel, source))
        if found is None:
            return None
        instance, inbox = found
        upstream = self.upstream_of[(id(instance), inbox)]
        return OperatorError.wrap(upstream.name, "pickle.loads", exc, has_record=False,
                                  hint=f"from kernel {source}: {UNRESTORABLE_RECORD}")

    def backpressure(self, blocked: bool) -> None:
        self._transport_blocked = blocked
        if not blocked and self._room_waiters:
            waiters, self._room_waiters = self._room_waiters, {}
            for unfinished, instance in waiters.items():
                if unfinished is not instance:  # (an instance waiting with batches: no output under way)
                    self.hold_input(unfinished, True, pacing=True)  # as `Instance._park`: its pieces go on
                instance.wake()
        self._set_paused(self._blocked())

    def wait_for_room(self, instance: Instance, unfinished) -> None:
        """`instance` has the rest of an output to hand on in pieces
        (`unfinished`) while the transport is backed up (a ring full): a
        piece would only pile up in its overflow (a flat_map making 2
        million records from one, for a slow kernel: all of them, in
        memory). It waits, woken when the transport has room
        (`backpressure`), its kernel's sources still paused, but meanwhile
        what other kernels send is read: two kernels each waiting for the
        other to read would wait for ever. (An instance that what is read
        reaches waits only where its output crosses: `_mark_sending_afar`.) The sources stay paused
        by the transport being blocked itself, until this wakes. A step
        that sends afar (`_mark_sending_afar`) waits so too, with its next
        batch (`unfinished` None)."""
        if unfinished is None:
            self._room_waiters[instance] = instance
            return
        if unfinished in self._room_waiters:
            return
        self._room_waiters[unfinished] = instance
        self.hold_input(unfinished, False, pacing=True)

    def hold_input(self, holder: object, held: bool, pacing: bool = False) -> None:
        """`holder` cannot keep up (an instance whose operator is an
        asynchronous sink with its buffer full; the rest of a batch's output
        still to go on, `Instance._park`; an inbox left in part,
        `Instance._defer`): pause this kernel's sources and stop reading
        what other kernels send, until every holder lets go. A `pacing`
        holder is the kernel spreading its own work over ticks, not
        backpressure: the sources' time paused by it alone is not counted
        as backpressured (metrics)."""
        holders = self._pacing_holders if pacing else self._input_holders
        was_holding = bool(self._input_holders) or bool(self._pacing_holders)
        if held:
            holders.add(holder)
        else:
            holders.discard(holder)
        holding = bool(self._input_holders) or bool(self._pacing_holders)
        if holding != was_holding:
            self.transport.hold_reading(holding)
        self._set_paused(self._blocked())

    def hold_sources(self, holder, held: bool) -> None:
        """`holder` (a loop's control, max_in_flight) has enough records
        waiting: pause this kernel's sources only, until every holder lets
        go. Unlike `hold_input`, what other kernels send is still read: a
        loop's own control messages come that way, and the records waiting
        go into runs only as they flow."""
        if held:
            self._source_holders.add(holder)
        else:
            self._source_holders.discard(holder)
        self._set_paused(self._blocked())

    def _blocked(self) -> bool:
        return self._backpressured() or bool(self._pacing_holders)

    def _backpressured(self) -> bool:
        return self._transport_blocked or bool(self._input_holders) or bool(self._source_holders)

    def _set_paused(self, blocked: bool) -> None:
        if self.metrics:
            backpressured = self._backpressured()
            if backpressured != (self._paused_at is not None):
                now = self.kernel.clock.monotonic()
                if backpressured:
                    self._paused_at = now
                else:
                    self.backpressured += now - self._paused_at
                    self._paused_at = None
        self.paused = blocked
        if not blocked:
            paused, self._paused_sources = self._paused_sources, []
            for source in paused:
                source.wake()

    def park_source(self, source: Instance) -> None:
        self._paused_sources.append(source)

    def instance_ended(self, instance: Instance) -> None:
        if self.epochs is not None:
            self.epochs.ended(instance.index, self._ended_part(instance))
        elif self._live == 1:
            self.commit(EVERY_EPOCH)  # no epochs: held-back output goes out at the end
        self._live -= 1
        if self._live == 0:
            self.kernel.context.watermark = _INF
            self.transport.finish_sending()
            self.kernel.release()

    def metrics_snapshot(self) -> dict:
        """What this kernel has done so far, as plain data (`kernel.metrics`
        renders it): per instance `[step, records in (None: a source),
        records out (None: a sink), watermark (None: none yet), late events
        (None: not a window), the id of its graph node, whether it is a
        combiner's partial half, seconds in its on_batch (None: a
        source)]`, and the kernel's busy seconds per task class, stalls,
        idle seconds and backpressured seconds; with epochs, the last
        complete epoch and the last few epochs' snapshot times (the
        dashboard's timeline)."""
        steps = []
        nodes = len(self.graph.nodes)
        for index, instance in enumerate(self.instances):
            watermark = instance.frontier
            late = getattr(instance.op, "late", None)
            steps.append([
                instance.name,
                None if instance.is_source else instance.records_in,
                instance.records_out if instance.targets else None,  # None: a sink emits nothing
                None if watermark == -_INF else watermark,
                late if type(late) is int else None,  # a window's count (not SelectBatches' flag)
                index if index < nodes else self._partial_for[index],  # the graph's step (Graph.describe)
                index >= nodes,  # a combiner's partial half, before the exchange
                None if instance.is_source else instance.busy,  # seconds in its on_batch
            ])
        backpressured = self.backpressured
        if self._paused_at is not None:
            backpressured += self.kernel.clock.monotonic() - self._paused_at
        scheduler = self.kernel.statistics().scheduler
        snapshot = {
            "kernel": self.kernel.context.index,
            "steps": steps,
            "busy": dict(scheduler.busy_time) if scheduler else {},
            "stalls": scheduler.stalls if scheduler else 0,
            "idle": scheduler.idle_time if scheduler else 0.0,
        }
        if self.transport.peers > 1:  # one kernel alone is never backpressured
            snapshot["backpressured"] = backpressured
        if self.snapshot_bytes is not None:  # a run with a state_dir that took a snapshot
            snapshot["epochs"] = [list(EPOCH_BUCKETS), list(self._epoch_buckets), self._epoch_seconds]
            snapshot["snapshot_bytes"] = self.snapshot_bytes
            snapshot["epoch_log"] = self._epoch_log
        if self.complete is not None:
            snapshot["complete"] = self.complete
        for observe in self.observers:
            snapshot.update(observe())
        return snapshot

    def source_watermark_moved(self) -> None:
        self.kernel.context.watermark = min(s.output_watermark for s in self._sources)

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

    def release(self) -> None:
        """A run on one kernel in the caller's process that failed or was
        cancelled: what its steps hold open (`to_files`' file of the epoch,
        `from_files`' files being read) is closed now. The run's operators
        are a cycle, so they kept their descriptors until a full collection
        found them (a ResourceWarning then): a server running flows that
        fail held one a failed run, for ever with the collector off. A step
        says what to close with `_release()`."""
        for instance in self.instances:
            release = getattr(instance.op, "_release", None)
            if release is not None:
                release()

    # -- epochs -------------------------------------------------------------------

    def _start_epochs(self) -> int:
        """Set up epochs, restoring a snapshot if the coordinator has one;
        returns how many remote channels had already ended in it."""
        coordinator = self.coordinator
        coordinator.attach(self)
        for source in self._sources:
            op = getattr(source.op, "inner", source.op)  # an event-time wrapper's source
            if type(op).on_epoch is Operator.on_epoch and not op.keyed_states:
                self.kernel.logger.warning(
                    "%s keeps no position (no on_epoch/restore): after a crash a resumed run "
                    "reads it again from its start", source.name, extra={"step": source.name})
        durable = self._measured(coordinator.durable) if self.metrics else coordinator.durable
        tracked = any(getattr(state, "_tracked", False)  # (deltas: see `snapshot`)
                      for instance in self.instances if type(instance.op).on_epoch is Operator.on_epoch
                      for state in getattr(instance.op, "keyed_states", {}).values())
        self.epochs = EpochTracker(len(self.instances), durable, coordinator.finished,
                                   coordinator.first_epoch, deltas=tracked)
        ended_remote = 0
        if isinstance(coordinator.snapshot, Rescaled):
            restore_rescaled(self, coordinator.snapshot)
        elif coordinator.snapshot is not None:
            self._restore(snapshot_parts(coordinator.snapshot))
        if coordinator.snapshot is not None:
            ended_remote = sum(
                1 for instance, inbox in self._remote_inboxes.values()
                if instance.ended or inbox in instance.progress.closed
            )
        coordinator.restored(self)  # also on a fresh start: a crashed run's leftovers go
        if self._live and any(not s.ended for s in self._sources):
            self.kernel.call_later(coordinator.interval, self._next_epoch)
        return ended_remote

    def _restore(self, parts: dict) -> None:
        for index, part in parts.items():
            instance = self.instances[index]
            if part == ENDED:
                self.restored_ended(instance, part)
                continue
            _call(instance, "restore", instance.restore_part(unpickled_part(instance.name, part)))
        if self._live == 0:
            self.kernel.release()

    def restored_ended(self, instance: Instance, part: str = ENDED) -> None:
        """`instance` had ended in the run a resumed one restores (`part`:
        its part of the snapshot, an `Ended` where it kept something)."""
        instance.ended = True
        self._live -= 1
        if part.__class__ is Ended and hasattr(instance.op, "restore_ended"):
            _call(instance, "restore_ended", part.snapshot)
        self.epochs.ended(instance.index, part)  # (kept in this run's snapshots: a second crash keeps it too)

    @staticmethod
    def _ended_part(instance: Instance) -> str:
        """What stands for an ended instance in the epochs after its end:
        ENDED, or an `Ended` with what its operator keeps for a resumed run
        (`ended_snapshot()`, an internal hook: a file source's skipped count)."""
        keep = getattr(instance.op, "ended_snapshot", None)
        if keep is None:
            return ENDED
        snapshot = _call(instance, "ended_snapshot")
        return ENDED if snapshot is None else Ended(snapshot)

    def _next_epoch(self) -> None:
        live = [source for source in self._sources if not source.ended]
        if not live or self.epochs is None or self.kernel.failed:
            return  # (after a failure: see `snapshot`)
        # One kernel alone too: its writer thread marks each epoch complete
        # as it writes it, in order, and snapshots written slower than they
        # were taken (a large state, a slow disk, a short interval) queued
        # on it without end, each a pickle of the whole state in memory.
        if not self.epochs.may_take(self.complete or 0):
            self._epoch_due = True  # it starts when an epoch completes (`commit`)
            return
        epoch = self.epochs.take_epoch()
        if self.metrics:
            self._epoch_started[epoch] = self.kernel.clock.monotonic()
        for source in live:
            source.inject_epoch(epoch)  # (behind a large emit still going on in pieces)
        self.kernel.call_later(self.coordinator.interval, self._next_epoch)

    def _measured(self, durable):
        """The coordinator's `durable`, noting each epoch's duration (from
        its start on this kernel to its whole snapshot: alignment and
        pickling; the write to disk follows on the coordinator's thread)
        and the snapshot's size."""

        def measured(epoch: int, blob: bytes) -> None:
            started = self._epoch_started.pop(epoch, None)
            if started is not None:
                seconds = self.kernel.clock.monotonic() - started
                self._epoch_seconds += seconds
                self._epoch_buckets[bisect.bisect_left(EPOCH_BUCKETS, seconds)] += 1
                self._epoch_log.append([epoch, self.kernel.clock.now(), seconds])
                del self._epoch_log[:-EPOCH_LOG]
            self.snapshot_bytes = len(blob)
            durable(epoch, blob)

        return measured

    def snapshot(self, instance: Instance, epoch: int) -> None:
        """`instance` has aligned on `epoch`: its part of this kernel's snapshot.
        Nothing once the kernel has failed: a step failed in the middle of a
        batch, whose records are in no step's output while its source's
        position is past them; an epoch snapshotted then (a marker carried
        on through a chain by a timer or a commit due before the run's wait
        woke) was complete, and a run resumed from it lost the batch."""
        if self.epochs is None or self.kernel.failed:
            return
        if instance.index in self._partial_for and hasattr(instance.op, "flush_partials"):
            # A combiner's partial half sends what it holds on ahead of the
            # marker, so no snapshot holds partials: a run resumed on one
            # kernel has no partial half to give them to.
            _call(instance, "flush_partials")
        op = instance.op
        # Whole: at a base (every instance's states alike: `EpochTracker`),
        # and always where the operator's own on_epoch may put its states'
        # snapshots anywhere (the store finds deltas only where the default
        # puts them: `state/_deltas.py`).
        if self.epochs.is_base(epoch) or type(op).on_epoch is not Operator.on_epoch:
            for state in getattr(op, "keyed_states", {}).values():
                take_whole = getattr(state, "take_whole", None)
                if take_whole is not None:
                    take_whole()
        part = instance.snapshot_part(_call(instance, "on_epoch", epoch))
        self.epochs.part(instance.index, epoch, pickled_part(instance.name, part))

    def commit(self, epoch: int) -> None:
        """`epoch` is complete on every kernel: operators may publish it."""
        if self.epochs is not None and epoch != EVERY_EPOCH:
            self.complete = epoch
        for instance in self.instances:
            _call(instance, "on_commit", epoch)
        if self._epoch_due:
            self._epoch_due = False
            self._next_epoch()


def _upstream_first(source: Instance, leads: dict[int, bool]) -> list[Instance]:
    """The instances reachable from `source` (up to a loop's entry) that
    `leads` marks, upstream first: depth first, reversed postorder."""
    order: list[Instance] = []
    seen: set[int] = set()

    def visit(at: Instance) -> None:
        for target in _local_targets(at):
            if id(target) not in seen and leads[id(target)]:
                seen.add(id(target))
                if not isinstance(target, Entry):
                    visit(target)
                order.append(target)

    visit(source)
    return order[::-1]


def _held_helpers(runtime: Runtime, helpers: dict, place: int):
    """An operator's emit, advance_watermark and mark_idle while the steps
    open (`Runtime._hold_during_open`): kept in `runtime._held`, in order,
    with the instance's `place`.
    A batch is checked at the emit (an error names the handler emitting)."""
    emit, advance, idle = helpers["emit"], helpers["advance_watermark"], helpers["mark_idle"]

    def held_emit(batch) -> None:
        if runtime._held is None:
            return emit(batch)
        if not isinstance(batch, list) and not _is_batch(batch):
            _not_a_batch(batch)
        runtime._held.append((place, True, partial(emit, batch)))

    def held_advance(watermark) -> None:
        if runtime._held is None:
            return advance(watermark)
        runtime._held.append((place, False, partial(advance, watermark)))

    def held_idle() -> None:
        if runtime._held is None:
            return idle()
        runtime._held.append((place, False, idle))

    return held_emit, held_advance, held_idle


def _local_targets(instance: Instance) -> list[Instance]:
    """The instances on this kernel that `instance` hands records to: its
    targets, and through an exchange its own kernel's share's consumer
    (not a loop's back edge)."""
    found = []
    for target, _ in instance.targets:
        if isinstance(target, Instance):
            found.append(target)
        elif isinstance(target, ExchangeOutput):
            found.append(target.local)
    return found
