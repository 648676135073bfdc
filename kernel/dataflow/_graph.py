"""The logical dataflow graph: nodes (operator factories) and edges.

A graph is a plan, built once by the fluent API and instantiated afresh on
every kernel of every run, so it holds factories, never operator instances.
Nodes are appended in creation order, which is always a topological order
(a node can only consume nodes that already exist); kernels rely on that to
build the same channels in the same order (timely's allocation by creation
order).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from kernel.dataflow._operator import Operator


@dataclass(frozen=True)
class Edge:
    """An input of a node. `exchange` edges carry `(key, value)` pairs and
    deliver each pair to the kernel that owns its key."""

    source: Node
    port: int
    exchange: bool = False


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

    @property
    def label(self) -> str:
        return f"{self.name} (step {self.id})"


class Graph:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[Node] = []
        self._names: dict[str, int] = {}

    def add(
        self,
        name: str,
        factory: Callable[[], Operator],
        inputs=(),
        *,
        is_source=False,
        combiner: Combiner | None = None,
        kind: tuple[str, ...] | None = None,
    ) -> Node:
        node = Node(len(self.nodes), self._unique(name), factory, list(inputs), is_source, combiner,
                    kind or factory_kind(factory))
        for edge in node.inputs:
            if edge.source.id >= node.id or self.nodes[edge.source.id] is not edge.source:
                raise ValueError(f"{edge.source.label} belongs to another dataflow")
        self.nodes.append(node)
        return node

    def fingerprint(self) -> str:
        """Names what the flow's snapshots depend on: its name and, for each
        step, its kind and where its inputs come from (which step, which
        port, exchanged by key or not). Not the steps' names or arguments: a
        to_files directory can move, a function can be fixed or renamed, and
        a run still resumes (and a cluster's processes still agree)."""
        shape = [(node.kind, node.is_source, node.combiner is not None,
                  [(e.source.id, e.port, e.exchange) for e in node.inputs]) for node in self.nodes]
        return hashlib.sha256(repr((self.name, shape)).encode()).hexdigest()

    def describe(self) -> dict:
        """The graph as plain data (JSON- and msgpack-ready), for the
        dashboard: each step's id, name, label, kind, whether it is a
        source or splits around an exchange (a combiner), and its inputs
        (from which step, which port, exchanged by key or not)."""
        return {
            "name": self.name,
            "steps": [
                {"id": node.id, "name": node.name, "label": node.label,
                 "kind": node.kind[0] if node.kind else "", "source": node.is_source,
                 "combiner": node.combiner is not None,
                 "inputs": [{"from": e.source.id, "port": e.port, "exchange": e.exchange}
                            for e in node.inputs]}
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
