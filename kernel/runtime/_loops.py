"""Loops on one kernel: rounds, and when one is complete on every kernel.

A loop (`Stream.iterate`, kernel/dataflow/_loops.py) runs in *runs* and
*rounds*. A run starts when the loop's outer time moves on: its input
has ended, or (a loop inside another) the enclosing loop's round has ended
on every input. The run's round 0 is what came in before that; round r+1 is
what the feedback carried in round r. Records carry no round: a
`RoundMarker(loop, r)` follows each round's data on every channel, as a
watermark follows its data. Rounds go in lockstep: round r+1 starts only
once round r is complete on every kernel, so between two markers a channel
holds one round's data, and an operator's round is complete once the marker
has come on all its inputs (it is then told: `Operator.on_round`).

Deciding that a round is complete everywhere (timely's progress tracking of
pointstamps, made coarse by the lockstep): on each kernel a `LoopControl`
counts the loop's steps (its *members*: every instance inside the loop, the
feedback and the leaving steps too) that have had the round's marker on every
input. When all have, and in round 0 every entry (head and enter steps) has
closed its input, the kernel's feedback step sends `RoundMarker(loop, r,
count)` to the head on every kernel, `count` being the records it fed back
in round r, after them on the back edge. A head that has that marker from
every kernel knows that round r is complete everywhere and how much was fed
back in all: nothing (or `max_rounds` reached) ends the run, and every
kernel's head, seeing the same markers, decides the same. Then the entries
hand on what ended their outer time (the enclosing round's marker, or the
end of input) and the run is over.

Within a run nothing new comes from outside: a nested loop's input is an
enclosing round's data, and the enclosing round waits for the nested run
(its entries pass the enclosing marker on only at the run's end); a loop at
the top runs once, when its input ends. Outer watermarks (event time) are not
carried into a loop (rounds have no event time): its entries hold them back,
and the end of input (+inf) comes after the last run.
"""

from __future__ import annotations

from kernel.dataflow import EpochMarker, RoundMarker
from kernel.dataflow._errors import KernelError
from kernel.dataflow._loops import ENTER, FEEDBACK, HEAD

from ._instance import END, Instance, _call


class LoopControl:
    """One loop on one kernel: counts its members' rounds, starts rounds,
    ends runs (see the module docstring)."""

    def __init__(self, scope) -> None:
        self.id = scope.id
        self.name = scope.name
        self.max_rounds = scope.max_rounds
        self.members = 0  # instances that have every round's marker on every input
        self.done: dict[int, int] = {}  # round -> members whose inputs all had its marker
        self.entries: list[Entry] = []  # this kernel's head and enter steps
        self.closed = 0  # entries whose outer time has ended in this run
        self.feedback: FeedbackInstance | None = None
        self.head: Head | None = None
        self.rounds = 0  # rounds run, every run (for tests and benches)

    def member_done(self, round: int) -> None:
        self.done[round] = self.done.get(round, 0) + 1
        self._check(round)

    def entry_closed(self) -> None:
        self.closed += 1
        self._check(0)

    def _check(self, round: int) -> None:
        if self.done.get(round, 0) == self.members and (round or self.closed == len(self.entries)):
            del self.done[round]
            self.rounds += 1
            self.feedback.end_round(round)

    def round_complete(self, round: int, fed_back: int) -> None:
        """Round `round` is complete on every kernel; `fed_back` records
        came back from it, over all kernels."""
        if fed_back and (self.max_rounds is None or round + 1 < self.max_rounds):
            self.head.release(round + 1)
            for entry in self.entries:
                entry._forward(RoundMarker(self.id, round + 1))
            return
        self.head.drop()
        self.closed = 0
        for entry in self.entries:
            entry.end_run()


class Membership:
    """How an instance inside loops handles their round markers: once one
    has come on every input, it calls `on_round` (for the innermost loop),
    passes it on (when the instance's output is inside that loop) and tells
    the loop's control."""

    __slots__ = ("channels", "controls", "innermost", "passes", "seen")

    def __init__(self, controls: dict, innermost: int, passes: frozenset, channels: int) -> None:
        self.controls = controls
        self.innermost = innermost
        self.passes = passes
        self.channels = channels
        self.seen: dict[tuple[int, int], int] = {}

    def marker(self, instance: Instance, marker: RoundMarker) -> None:
        key = (marker.loop, marker.round)
        seen = self.seen.get(key, 0) + 1
        if seen < self.channels:
            self.seen[key] = seen
            return
        self.seen.pop(key, None)
        if marker.loop == self.innermost:
            _call(instance, "on_round", marker.round)
        if marker.loop in self.passes:
            instance._forward(RoundMarker(marker.loop, marker.round))
        self.controls[marker.loop].member_done(marker.round)


class Entry(Instance):
    """A head or enter step: passes its outside input on as round 0, and
    closes the round when its outer time ends (see the module docstring)."""

    __slots__ = ("boundary", "control", "controls", "outer_seen", "outside", "outside_open")

    def setup(self, control: LoopControl, controls: dict, outside: set) -> None:
        self.control = control
        self.controls = controls
        self.outside = outside  # the channel numbers from outside the loop
        self.outside_open = len(outside)
        self.outer_seen: dict[tuple[int, int], int] = {}
        self.boundary = None  # what ended the outer time of this run: an enclosing RoundMarker or END

    def _progress(self, channel: int, payload) -> None:
        cls = payload.__class__
        if cls is RoundMarker:  # an enclosing loop's round ended on this channel
            key = (payload.loop, payload.round)
            seen = self.outer_seen.get(key, 0) + 1
            if seen < self.outside_open:
                self.outer_seen[key] = seen
                return
            self.outer_seen.pop(key, None)
            self._close(payload)
        elif payload is END:
            self.outside_open -= 1
            if self.outside_open == 0:
                self._close(END)
        elif cls is EpochMarker:  # refused when the run is planned (kernel._facade)
            raise KernelError(f"{self.name}: epoch snapshots of loops are not supported")
        # a watermark or IDLE: rounds have no event time (module docstring)

    def _close(self, boundary) -> None:
        self.boundary = boundary
        self._forward(RoundMarker(self.control.id, 0))
        self.control.entry_closed()

    def end_run(self) -> None:
        """The run is over: hand on what ended its outer time."""
        boundary, self.boundary = self.boundary, None
        if boundary is END:
            self._end()
        else:
            self._forward(boundary)
            self.controls[boundary.loop].member_done(boundary.round)

    def _end(self) -> None:
        self._finish()


class Head(Entry):
    """The loop's input and, on port 1, its back edge from every kernel's
    feedback step: what comes back is held, by the round it was fed back
    in, until that round is complete everywhere."""

    __slots__ = ("arrived", "back_open", "back_rounds", "fed_back", "held", "peers", "waiting_end")

    def setup_back(self, back: list[int]) -> None:
        self.back_rounds = dict.fromkeys(back, 0)  # channel -> markers it has delivered this run
        self.back_open = len(back)
        self.peers = len(back)
        self.held: dict[int, list] = {}  # round -> batches for it
        self.arrived: dict[int, int] = {}  # round -> kernels whose marker came
        self.fed_back: dict[int, int] = {}  # round -> records fed back, so far
        self.waiting_end = False  # END went on; the back edges' ends are still to come

    def activate(self):
        self.scheduled = False
        pending, self.pending = self.pending, []
        back_rounds = self.back_rounds
        emit = self.op.emit
        for channel, payload in pending:
            if channel in back_rounds:
                if isinstance(payload, list):
                    self.held.setdefault(back_rounds[channel] + 1, []).append(payload)
                else:
                    self._back_progress(channel, payload)
            elif isinstance(payload, list):
                emit(payload)
            else:
                self._progress(channel, payload)

    def _back_progress(self, channel: int, payload) -> None:
        if payload is END:
            self.back_open -= 1
            if self.back_open == 0 and self.waiting_end:
                self.ended = True
                self.runtime.instance_ended(self)
            return
        if payload.__class__ is not RoundMarker:
            return  # the watermark the end of input brings (+inf)
        round = payload.round
        self.back_rounds[channel] += 1
        self.fed_back[round] = self.fed_back.get(round, 0) + payload.count
        arrived = self.arrived[round] = self.arrived.get(round, 0) + 1
        if arrived == self.peers:
            del self.arrived[round]
            self.control.round_complete(round, self.fed_back.pop(round))

    def release(self, round: int) -> None:
        for batch in self.held.pop(round, ()):
            self.op.emit(batch)

    def drop(self) -> None:
        """The run is over: what the last round fed back goes (max_rounds)."""
        self.held.clear()
        for channel in self.back_rounds:
            self.back_rounds[channel] = 0

    def _end(self) -> None:
        # END goes into the loop now, but the head ends only once every
        # kernel's feedback has sent its end back: the transport waits for
        # those, and they must find the head still there.
        self._forward(END)
        self.waiting_end = True
        if self.back_open == 0:
            self.ended = True
            self.runtime.instance_ended(self)


class FeedbackInstance(Instance):
    """The feedback step: sends what it gets back to this kernel's head,
    and each round's end, with its count, to every kernel's head once every
    member here is done with the round (`LoopControl`)."""

    __slots__ = ("control",)

    def end_round(self, round: int) -> None:
        op = self.op
        count, op.fed = op.fed, 0
        self._forward(RoundMarker(self.control.id, round, count))


class BackEdge:
    """The sending end of a loop's back edge on one kernel: records to this
    kernel's head; round markers and the end to every kernel's head."""

    chained = False

    def __init__(self, channel: int, head: Head, local_channel: int, transport) -> None:
        self.channel = channel
        self.head = head
        self.local_channel = local_channel
        self.transport = transport

    def deliver(self, _channel: int, payload) -> None:
        self.head.deliver(self.local_channel, payload)
        if isinstance(payload, list):
            return
        transport = self.transport
        wire = None if payload is END else payload
        for dest in range(transport.peers):
            if dest != transport.index:
                transport.send_progress(dest, self.channel, wire)


INSTANCE_CLASSES = {HEAD: Head, ENTER: Entry, FEEDBACK: FeedbackInstance}


def back_edge(runtime, head: Head, port: int) -> BackEdge:
    """Wire a back edge into `head`: a channel from every kernel."""
    transport = runtime.transport
    channel = transport.allocate() if transport.peers > 1 else -1
    local_channel = None
    for source in range(transport.peers):
        inbox = head.add_channel(port)
        if source == transport.index:
            local_channel = inbox
        else:
            runtime._remote_inboxes[(channel, source)] = (head, inbox)
    return BackEdge(channel, head, local_channel, transport)


def wire_loops(graph, instances: list[Instance], nodes: list) -> dict[int, LoopControl]:
    """A `LoopControl` per loop, and each instance's part in the loops it is
    in (`nodes[i]` is instance i's step)."""
    controls = {scope.id: LoopControl(scope) for scope in graph.loops}
    for instance, node in zip(instances, nodes):
        scope = node.input_scope
        if node.loop is None:
            continue
        chain = scope.chain() if scope is not None else []
        for loop in chain:
            controls[loop.id].members += 1
        control = controls[node.loop.id]
        if node.role in (HEAD, ENTER):
            outside = {c for c, port in enumerate(instance.ports) if port == 0}
            instance.setup(control, controls, outside)
            control.entries.append(instance)
            if node.role == HEAD:
                control.head = instance
                instance.setup_back([c for c, port in enumerate(instance.ports) if port == 1])
            continue
        if node.role == FEEDBACK:
            instance.control = control
            control.feedback = instance
            passes = frozenset()
        else:  # inside the loop, or leaving it (its output is outside)
            out = node.output_scope
            passes = frozenset(loop.id for loop in out.chain()) if out is not None else frozenset()
        instance.loop = Membership(controls, scope.id, passes, len(instance.ports))
    return controls
