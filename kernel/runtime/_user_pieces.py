"""A user's operator's large output, handed on in pieces.

The kernel's own steps hand a large output on a piece a tick (they return
an `Unfinished`: operators/_calls.py `emit_in_pieces`), so that the kernel
still hands the loop back within its budget. A user's operator (`apply()`)
emits through `self.emit` and returns None, so one `emit` of a million
records went all the way downstream in one activation: 0.9 s with the
host's loop held (a map and a filter after it, on one kernel).

The runtime now does for it what the built-in steps do themselves. Within
the operator's `on_batch`, `on_watermark` and `on_end`, an emit of a plain
list of more than LARGE_OUTPUT records hands its first PIECE on at once;
the rest of it, and every emit after it in that handler call, in order, go
on in later ticks, a PIECE a tick, as the `Unfinished` the handler then
returns, with whatever came after the batch (or followed the handler)
waiting behind them (`Instance._park`). An output under LARGE_OUTPUT costs
one `len()` and a flag more an emit.

Left whole, as before: an emit from `on_timer`, `on_idle`, `on_round` or a
task of the operator's own (nothing would hand its rest on, and they have
no `Unfinished` to return), a batch that is neither a plain list nor a
`TimedBatch` (a tuple; a `TimedBatch` is cut into `TimedBatch` pieces with
their stamps, as a source's is), and the output of an `on_end`
that hands back a future (its rest goes on before the future is waited
for, at once). An emit made while an earlier one's pieces still go on (from
a task) goes on behind them, whole, as it would have then: it was emitted
after them. A handler that calls another of its own (`on_end` calling
`self.on_batch`) is one handler call: the outer one hands the rest on (the
inner one's return would go to the user's code, which drops it); one
called from a task of the operator's own hands its emits on whole.

A source's large emit (a user's `Source` whose poll ignores
`records_wanted`) goes on in pieces too, by `source_pieces` here: its own
activations hand them on, one a tick, with what it does meanwhile
(emits, progress, its end, epoch markers) behind
them (`Instance._source_large`). A source's `TimedBatch` (a user's
`Source` gives its records event time so) is cut too, into `TimedBatch`
pieces with their stamps: a source has no other way to emit timed
records, and its watermark waits behind them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kernel.dataflow import TimedBatch
from kernel.dataflow._operator import LARGE_OUTPUT, PIECE, Operator, unfinished


class UserOutput:
    """One user operator's emits and handlers, wrapped (`install`)."""

    __slots__ = ("going", "inside", "rest", "sink")

    def __init__(self) -> None:
        self.inside = False  # within a wrapped handler call
        self.rest: list[list] | None = None  # what waits to go on, in order, once an emit was large
        self.going: list[list] | None = None  # a rest whose pieces go on now (`_pieces`), till its last
        self.sink: Callable[[list], object] | None = None  # the emit underneath (`emitter`)

    def install(self, op: Operator) -> None:
        """Wraps `op`'s on_batch, on_watermark and on_end (before anything
        takes them: a chained upstream's emit holds its on_batch)."""
        op.on_batch = self._handler(op.on_batch)
        op.on_watermark = self._handler(op.on_watermark)
        op.on_end = self._handler(op.on_end, future_allowed=True)

    def emitter(self, emit: Callable[[list], object]) -> Callable[[list], None]:
        """The operator's `emit`, given the one that hands a batch on now."""
        self.sink = emit

        def piecewise(batch) -> None:
            if self.going is not None:
                self.going.append(batch)  # (a task's) after an emit still going on in pieces: behind them
            elif not self.inside:
                emit(batch)
            elif self.rest is not None:
                self.rest.append(batch)  # behind the large one: order kept
            elif (batch.__class__ is list or batch.__class__ is TimedBatch) and len(batch) > LARGE_OUTPUT:
                emit(first_piece(batch))
                self.rest = [batch]  # (its first PIECE gone on: `_pieces` skips it; no copy of the rest)
            else:
                emit(batch)

        return piecewise

    def _handler(self, handler: Callable, future_allowed: bool = False) -> Callable:
        def wrapped(*args):
            if self.inside:  # called by another of its handlers: that call hands the rest on
                return handler(*args)
            self.inside = True
            try:
                returned = handler(*args)
            finally:
                self.inside = False
                rest, self.rest = self.rest, None
            if rest is None:
                return returned
            if asyncio.current_task() is not None:
                # called by a task of the operator's own (the kernel calls
                # handlers from its slices, loop callbacks): it would drop an
                # `Unfinished`, so the rest goes on now, whole, as its emits do
                for piece in _pieces(rest):
                    self.sink(piece)
                return returned
            if returned is not None:
                # on_end's future (work of its own under way): its rest goes on
                # now, before the step waits for it; anything else returned is
                # the user's mistake, an error that ends the run
                if future_allowed:
                    for piece in _pieces(rest):
                        self.sink(piece)
                return returned
            self.going = rest
            return unfinished(self._going(rest), self.sink)

        return wrapped

    def _going(self, rest: list[list]):
        """`rest`'s pieces; emits made meanwhile join `rest` (`piecewise`)."""
        yield from _pieces(rest)
        self.going = None  # (the last piece has gone on: `Unfinished.step` reads ahead)


def _pieces(batches: list[list]):
    """The batches waiting, a PIECE at most a piece, in order: the first
    from its second PIECE on (its first went on from the emit). A
    TimedBatch is cut too, each piece a TimedBatch with its records'
    stamps (it went whole, a user operator's, behind a large emit); any
    other batch that is not a plain list (a tuple) goes whole. (`batches`
    may grow while this runs.)"""
    start = PIECE
    for batch in batches:
        cls = batch.__class__
        if cls is list:
            for at in range(start, len(batch), PIECE):
                yield batch[at:at + PIECE]
        elif cls is TimedBatch:
            stamps = batch.timestamps
            for at in range(start, len(batch), PIECE):
                yield TimedBatch(batch[at:at + PIECE], stamps[at:at + PIECE])
        else:
            yield batch
            continue
        start = 0


def first_piece(batch: list) -> list:
    """The first PIECE of a large emit (a `TimedBatch`'s with its stamps)."""
    if batch.__class__ is TimedBatch:
        return TimedBatch(batch[:PIECE], batch.timestamps[:PIECE])
    return batch[:PIECE]


def source_pieces(batches: list):
    """`_pieces` for a source (`Instance._source_large`)."""
    return _pieces(batches)
