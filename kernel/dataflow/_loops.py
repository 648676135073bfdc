"""Loops in the dataflow model: scopes and the steps at their borders.

`Stream.iterate(body)` opens a *loop scope*; every step `body` makes lives
in it. A record's time inside a loop is the pair (outer time, round), as
timely's `Product` timestamps; here the round is not carried by each record
but by `RoundMarker`s, in band after each round's data, as watermarks are.

Four kinds of steps sit at a loop's borders (`Node.role`), each a plain
pass-through operator here; the runtime gives them their behaviour
(kernel/runtime/_loops.py):

* ``head``: the loop's input (port 0, from outside) and its feedback (port
  1, the back edge, the only edge of a graph that points to an earlier
  step); what `body` receives as `loop_input`.
* ``enter``: a stream from outside the loop used inside it (timely's
  `enter`): its records come in round 0. Made by `Graph.add` when a step in
  a loop reads a step outside it, once per stream and loop.
* ``feedback``: what `body` returns as `feedback`: it goes back to the head
  and is the next round's input.
* ``leave``: what `body` returns as `out`: it leaves the loop.

A cycle is allowed only through a back edge (feedback -> head): every trip
around it is a round later. `Graph.check_cycles` refuses any other.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from kernel.dataflow._errors import not_a_pair
from kernel.dataflow._operator import Operator

HEAD, ENTER, FEEDBACK, LEAVE = "head", "enter", "feedback", "leave"


@dataclass(eq=False)
class LoopScope:
    """One `iterate` call: its number (in creation order, as the graph's
    steps are), the scope around it (None: the top level), its name and
    `max_rounds` (None: until a round feeds nothing back)."""

    id: int
    parent: LoopScope | None
    name: str
    max_rounds: int | None = None
    max_in_flight: int | None = None

    def chain(self) -> list[LoopScope]:
        """This scope and every scope around it, innermost first."""
        scopes, at = [], self
        while at is not None:
            scopes.append(at)
            at = at.parent
        return scopes

    def within(self, other: LoopScope | None) -> bool:
        """This scope is `other` or inside it (everything is inside None)."""
        return other is None or other in self.chain()


def scope_within(scope: LoopScope | None, other: LoopScope | None) -> bool:
    return other is None or (scope is not None and scope.within(other))


class PassThrough(Operator):
    """A loop border's operator: hands every batch on as it is (the runtime
    decides when: kernel/runtime/_loops.py)."""

    def on_batch(self, port, batch):
        self.emit(batch)


class LoopHead(PassThrough):
    """The loop's input and feedback, merged: `loop_input`."""


class LoopEnter(PassThrough):
    """A stream from outside the loop, entering it in round 0."""


class LoopFeedback(PassThrough):
    """What goes back to the head for the next round (`fed`: records in
    this round so far)."""

    fed = 0

    def on_batch(self, port, batch):
        self.fed += len(batch)
        self.emit(batch)


#: never a pair, whatever their length: text and bytes are read as their
#: characters ("ab" went round as key "a", value "b"), mappings and sets
#: have no first and second field (a dict of two failed on two kernels as
#: a bare KeyError: 0, naming no step)
_NEVER_PAIRS = (str, bytes, bytearray, memoryview, Mapping, Set)


def _no_pair(record) -> bool:
    """Whether `record` surely is no `(key, value)` pair, without reading
    it: text, bytes, a mapping or a set; a tuple or a sized object (a
    list) of another length; or something that cannot be iterated (an
    int). An iterator is not read here (it may be read once only: the
    keyed step after reads it). Called only for a batch that is not all
    tuples of two."""
    if isinstance(record, _NEVER_PAIRS):
        return True
    cls = type(record)
    if hasattr(cls, "__len__"):
        try:
            return len(record) != 2
        except Exception:  # a __len__ that fails: the keyed step will see
            return False
    return not hasattr(cls, "__iter__") and not hasattr(cls, "__getitem__")


class KeyedLoopFeedback(LoopFeedback):
    """The feedback of a loop on a keyed stream: its records must be `(key,
    value)` pairs. The keyed steps read a record's key and value by place
    (`r[0]`, `r[1]`), so a triple fed back went round as a pair, its third
    field dropped without a word; one that is no pair is named here, where
    it is fed back."""

    def on_batch(self, port, batch):
        n = len(batch)
        if list(map(type, batch)).count(tuple) != n or list(map(len, batch)).count(2) != n:
            for record in batch:
                if _no_pair(record):
                    raise not_a_pair(self.name, ValueError(
                        "a record fed back into a loop on a keyed stream is no (key, value) pair"), record)
        super().on_batch(port, batch)


class LoopLeave(PassThrough):
    """What leaves the loop."""
