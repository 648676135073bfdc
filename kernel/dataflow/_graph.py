"""The logical dataflow graph: nodes (operator factories) and edges.

A graph is a plan, built once by the fluent API and instantiated afresh on
every kernel of every run, so it holds factories, never operator instances.
Nodes are appended in creation order, which is always a topological order
(a node can only consume nodes that already exist); kernels rely on that to
build the same channels in the same order (timely's allocation by creation
order). The one exception is a loop's back edge (`Edge.feedback`, from its
feedback step to its head: `_loops.py`), added when the loop's body is
built; `check_cycles` refuses every cycle without one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

from kernel.dataflow._errors import KernelError
from kernel.dataflow._loops import ENTER, FEEDBACK, HEAD, LEAVE, LoopEnter, LoopScope, scope_within
from kernel.dataflow._operator import Operator


@dataclass(frozen=True)
class Edge:
    """An input of a node. `exchange` edges carry `(key, value)` pairs and
    deliver each pair to the kernel that owns its key; `broadcast` edges
    deliver every record to every kernel (`Stream.broadcast`)."""

    source: Node
    port: int
    exchange: bool = False
    # a loop's back edge, from its feedback step to its head: a round later
    feedback: bool = False
    broadcast: bool = False


@dataclass(frozen=True)
class Combiner:
    """How a per-key aggregate splits around an exchange (a combiner, in
    MapReduce's words): `partial()` aggregates each kernel's own records
    before they are sent, `merge()` replaces the aggregate on the owning
    kernel and merges the partial results. Word count then sends one
    `(word, n)` per distinct word and kernel, not one record per word."""

    partial: Callable[[], Operator]
    merge: Callable[[], Operator]


@dataclass(eq=False)
class Node:
    id: int
    name: str
    factory: Callable[[], Operator]
    inputs: list[Edge] = field(default_factory=list)
    is_source: bool = False
    combiner: Combiner | None = None
    # What the step is, for snapshots: the operator's class and the arguments
    # that shape its state (a window), never its name, functions or paths.
    kind: tuple[str, ...] = ()
    # A source that never ends by itself (a followed file or stream): an
    # aggregate emitting at the end of its input after it would never emit.
    endless: bool = False
    # (a source) Given every old kernel's snapshot of the step in a resumed
    # run (`Operator.ENDED` where it had ended) and what the run that wrote
    # them recorded of it (its `resume_record`, None if unknown): why each
    # kernel must restore from all of them, cut by key group as when
    # rescaling, rather than from its own; None: its own is enough. Where
    # the step had ended on every kernel, no cut reopens it: a reason then
    # refuses the run (`kernel/runtime/_rescale.py`, `resume_checks`).
    cut_on_resume: Callable[[list, object], str | None] | None = None
    # What a run records of the step in its state_dir (JSON), for a later run
    # resumed from an epoch in which its snapshots say nothing (ended
    # everywhere): a Redis source's stream list.
    resume_record: object = None
    # (a bounded source that cuts its input by size: from_files) Lists the
    # input, `[(name, size, inode number, error or None)]`, once a run: every
    # kernel plans its share from that one listing (kernel/execution/_listings.py)
    input_listing: Callable[[], list] | None = None
    # the innermost loop the step is in (None: none), and what it does at a
    # loop's border (None: inside it; or _loops.HEAD, ENTER, FEEDBACK, LEAVE)
    loop: LoopScope | None = None
    role: str | None = None
    # A step that needs event time (a join with ttl=, distinct(within=)):
    # what it says it needs, and its factory without the hint naming the
    # custom steps on the way. Inside a loop it is checked again once the
    # loop's feedback, a round's input too, is connected (`Stream.iterate`).
    time_check: tuple[str, Callable[[], Operator]] | None = None

    @property
    def label(self) -> str:
        return f"{self.name} (step {self.id})"

    @property
    def input_scope(self) -> LoopScope | None:
        """The loop its inputs are in: a head's and an enter's come from outside."""
        if self.role in (HEAD, ENTER):
            return self.loop.parent
        return self.loop

    @property
    def output_scope(self) -> LoopScope | None:
        """The loop its output is in: a leave's goes outside."""
        return self.loop.parent if self.role == LEAVE else self.loop


def _check_step_name(name) -> None:
    """A step's `name=`: a str. Anything else was taken as it was (`map(fn,
    name=5)` made a step labelled 5 in errors, metrics and the fingerprint)."""
    if not isinstance(name, str):
        raise TypeError(f"a step's name must be a str, got {name!r}")


class Graph:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self._names: dict[str, int] = {}
        self.loops: list[LoopScope] = []
        self.scope: LoopScope | None = None  # the loop whose body is being built
        self._entered: dict[tuple[int, int], Node] = {}  # (step, loop) -> its enter step

    def add(
        self,
        name: str,
        factory: Callable[[], Operator],
        inputs=(),
        *,
        is_source=False,
        combiner: Combiner | None = None,
        kind: tuple[str, ...] | None = None,
        loop: LoopScope | None = None,
        role: str | None = None,
    ) -> Node:
        # A source made inside a loop's body is outside the loop (it has no
        # rounds); its records enter the loop where a step in it reads them.
        _check_step_name(name)
        if role is None:
            loop = None if is_source else self.scope
        inputs = list(inputs)
        for edge in inputs:
            if edge.source.id >= len(self.nodes) or self.nodes[edge.source.id] is not edge.source:
                raise ValueError(f"{edge.source.label} belongs to another dataflow")
        probe = Node(-1, name, factory, loop=loop, role=role)
        inputs = [self._into_scope(edge, probe.input_scope, name) for edge in inputs]
        node = Node(len(self.nodes), self._unique(name), factory, inputs, is_source, combiner,
                    kind or factory_kind(factory), loop=loop, role=role)
        self.nodes.append(node)
        return node

    # -- loops ----------------------------------------------------------------------

    def open_loop(self, name: str, max_rounds: int | None, max_in_flight: int | None = None) -> LoopScope:
        """Start building a loop's body: steps added until `close_loop` are in it."""
        _check_step_name(name)
        scope = LoopScope(len(self.loops), self.scope, name, max_rounds, max_in_flight)
        self.loops.append(scope)
        self.scope = scope
        return scope

    def close_loop(self, scope: LoopScope) -> None:
        self.scope = scope.parent

    def abandon_loop(self, scope: LoopScope, steps: int) -> None:
        """A loop whose body failed to build: its steps (every step from
        `steps` on) and the loop go, so the flow can still be run."""
        self.scope = scope.parent
        for node in self.nodes[steps:]:
            count = self._names.get(node.name, 0)
            if count:
                self._names[node.name] = count - 1
        del self.nodes[steps:]
        self.loops = [loop for loop in self.loops if loop.id < scope.id]
        self._entered = {key: node for key, node in self._entered.items() if node.id < steps}

    def connect_feedback(self, head: Node, feedback: Node) -> None:
        """The loop's back edge: `feedback` goes to `head`'s port 1."""
        head.inputs.append(Edge(feedback, 1, feedback=True))

    def _into_scope(self, edge: Edge, scope: LoopScope | None, consumer: str) -> Edge:
        """`edge` as a step in `scope` reads it: a stream from outside the
        loop goes through an enter step per loop it enters (one per stream
        and loop, shared); a stream from inside a loop cannot be read from
        outside it (only what `body` returns as `out` leaves)."""
        source = edge.source
        outer = source.output_scope
        if outer is scope:
            return edge
        if not scope_within(scope, outer):
            where = f"inside the loop {outer.name!r}" if outer is not None else "outside every loop"
            raise KernelError(
                f"{consumer}: reads {source.label}, which is {where}: a loop's steps are seen "
                "outside it only through what its body returns as out (iterate's result)")
        entering = []
        at = scope
        while at is not outer:
            entering.append(at)
            at = at.parent
        for loop in reversed(entering):  # outermost first
            key = (source.id, loop.id)
            enter = self._entered.get(key)
            if enter is None:
                enter = Node(len(self.nodes), self._unique(f"{loop.name}: enter {source.name}"), LoopEnter,
                             [Edge(source, 0)], kind=("LoopEnter",), loop=loop, role=ENTER)
                self.nodes.append(enter)
                self._entered[key] = enter
            source = enter
        return Edge(source, edge.port, edge.exchange, broadcast=edge.broadcast)

    def state_per_kernel(self) -> tuple[str, str] | None:
        """Why a run of this flow resumes from a state_dir only on as many
        kernels as wrote it, `(what the flow has, why)`, or None: state kept
        per kernel, not by key, cannot be cut by key group."""
        if self.loops:
            return "a flow with loops (Stream.iterate)", "its rounds' state is kept per kernel, not by key"
        if any(edge.broadcast for node in self.nodes for edge in node.inputs):
            return ("a flow with broadcast()",
                    "what a step keeps of broadcast records is on every kernel, not cut by key")
        return None

    def check_cycles(self) -> None:
        """Refuse a cycle that does not pass a loop's back edge (made by
        hand, not by `iterate`): it has no round to count, so its progress
        could never be decided. The error names the steps around it."""
        for node in self.nodes:
            for edge in node.inputs:
                if edge.feedback and not (edge.source.role == FEEDBACK and node.role == HEAD
                                          and edge.source.loop is node.loop):
                    raise KernelError(f"{node.label}: a back edge from {edge.source.label} that is not "
                                      "a loop's feedback (loops are made with Stream.iterate)")
        state: dict[int, int] = {}  # 1: on the path, 2: done
        for start in self.nodes:
            if start.id in state:
                continue
            path = [start]
            pending = [iter(start.inputs)]
            state[start.id] = 1
            while pending:
                edge = next(pending[-1], None)
                if edge is None:
                    pending.pop()
                    state[path.pop().id] = 2
                    continue
                if edge.feedback:
                    continue
                source = edge.source
                mark = state.get(source.id)
                if mark == 1:
                    cycle = path[[n.id for n in path].index(source.id):]
                    steps = " <- ".join(n.label for n in [*cycle, source])
                    raise KernelError(
                        f"a cycle without a round: {steps} (each reads the next); a dataflow may "
                        "loop only through Stream.iterate, whose feedback counts the rounds")
                if mark is None:
                    state[source.id] = 1
                    path.append(source)
                    pending.append(iter(source.inputs))

    def fingerprint(self) -> str:
        """Names what the flow's snapshots depend on: its name and, for each
        step, its kind and where its inputs come from (which step, which
        port, exchanged by key or not). Not the steps' names or arguments: a
        to_files directory can move, a function can be fixed or renamed, and
        a run still resumes (and a cluster's processes still agree)."""
        shape = [(node.kind, node.is_source, node.combiner is not None,
                  [(e.source.id, e.port, e.exchange) for e in node.inputs]) for node in self.nodes]
        if self.loops:  # (a flow without loops keeps the fingerprint it had)
            shape.append([(n.loop.id if n.loop else None, n.role) for n in self.nodes])
        import hashlib  # (here: only runs with a state_dir, and clusters, take a fingerprint)

        return hashlib.sha256(repr((self.name, shape)).encode()).hexdigest()

    def fingerprint_steps(self) -> dict:
        """What `fingerprint` hashes, step by step, as JSON-ready data with
        each step's name: a store keeps it, so that a run of a changed
        flow is told which step differs (`state._store.check_meta`)."""
        return {"name": self.name, "steps": [
            [node.name, repr((node.kind, node.is_source, node.combiner is not None,
                               [(e.source.id, e.port, e.exchange) for e in node.inputs],
                               (node.loop.id if node.loop else None, node.role) if self.loops else None))]
            for node in self.nodes]}

    def describe(self) -> dict:
        """The graph as plain data (JSON- and msgpack-ready), for the
        dashboard: each step's id, name, label, kind, whether it is a
        source or splits around an exchange (a combiner), and its inputs
        (from which step, which port, exchanged by key or not, broadcast to
        every kernel or not: both cross kernels, which the page draws)."""
        return {
            "name": self.name,
            "steps": [
                {"id": node.id, "name": node.name, "label": node.label,
                 "kind": node.kind[0] if node.kind else "", "source": node.is_source,
                 "combiner": node.combiner is not None,
                 "inputs": [{"from": e.source.id, "port": e.port, "exchange": e.exchange,
                             "broadcast": e.broadcast} for e in node.inputs]}
                for node in self.nodes
            ],
        }

    def _unique(self, name: str) -> str:
        count = self._names.get(name, 0)
        self._names[name] = count + 1
        return name if count == 0 else f"{name}#{count + 1}"


def factory_kind(factory) -> tuple[str, ...]:
    """The kind of a step made by `factory` (a class, a function, or a
    `functools.partial` of one): its qualified name."""
    while True:
        if isinstance(factory, functools.partial):
            factory = factory.func
        elif hasattr(factory, "__wrapped__"):  # a checking wrapper (functools.wraps)
            factory = factory.__wrapped__
        else:
            break
    return (getattr(factory, "__qualname__", type(factory).__qualname__),)
