"""Review of a user's operator's large emits handed on in pieces
(kernel/runtime/_user_pieces.py): each test compares what the step after
the operator saw with what the operator emitted, in the order emitted (a
plain-Python record of its own emits)."""

from __future__ import annotations

import asyncio

from kernel import Dataflow, Operator, TimedBatch, run


class Recorder(Operator):
    """Notes every batch it is given: its records and, for a TimedBatch,
    their stamps (None for a plain list)."""

    def __init__(self, seen) -> None:
        self.seen = seen

    def on_batch(self, port, batch):
        stamps = batch.timestamps if batch.__class__ is TimedBatch else [None] * len(batch)
        self.seen.extend(zip(batch, stamps))


def test_a_handler_calling_another_of_its_handlers_loses_no_record_of_a_large_emit():
    """on_end hands what it held to its own on_batch (a common way to
    flush a remainder): the 10,000 records on_batch emits there must all
    go on. The nested call's rest went back to the user's on_end, which
    drops what its on_batch returns: 8,976 records lost in silence."""

    class Tail(Operator):
        def __init__(self) -> None:
            self.held = []

        def on_batch(self, port, batch):
            if port == 0 and batch == ["flush"]:
                self.emit(self.held)
                self.held = []
            else:
                self.held.extend(batch)

        def on_end(self):
            self.on_batch(0, ["flush"])
            self.emit(["last"])

    seen = []
    flow = Dataflow("tail")
    flow.from_iterable(range(10_000), batch_size=500).apply(Tail).apply(lambda: Recorder(seen))
    run(flow)
    assert [record for record, _ in seen] == [*range(10_000), "last"]


def test_a_timed_batch_emitted_after_a_large_list_keeps_its_timestamps():
    """An emit after a large one waits in the rest, sliced into pieces:
    a TimedBatch sliced is a plain list, so its stamps were dropped."""

    class Mixed(Operator):
        def on_batch(self, port, batch):
            self.emit(list(range(5_000)))
            self.emit(TimedBatch(["a", "b"], [1.0, 2.0]))

    seen = []
    flow = Dataflow("mixed")
    flow.from_iterable([0]).apply(Mixed).apply(lambda: Recorder(seen))
    run(flow)
    assert seen == [*((i, None) for i in range(5_000)), ("a", 1.0), ("b", 2.0)]


def test_an_emit_from_the_operators_own_task_does_not_overtake_the_pieces_of_an_earlier_emit():
    """on_batch emits 10,000 records, then starts a task that emits a
    marker: the marker was emitted after every one of them, and must come
    after them. It went on whole at once, between the first piece and the
    rest (after record 1,023)."""

    class Marking(Operator):
        def on_batch(self, port, batch):
            self.emit(list(range(10_000)))
            self.context.kernel.spawn(self._mark())

        async def _mark(self):
            await asyncio.sleep(0)
            self.emit(["marker"])

    seen = []
    flow = Dataflow("marking")
    flow.from_iterable([0]).apply(Marking).apply(lambda: Recorder(seen))
    run(flow)
    assert [record for record, _ in seen] == [*range(10_000), "marker"]


def test_a_handler_called_from_the_operators_own_task_hands_on_every_record_of_a_large_emit():
    """A task of the operator's own calls its on_batch, which emits 10,000
    records: nothing hands a rest on from there (the task drops what
    on_batch returns), so they must go on whole, as a task's own emits do.
    The first piece went on, the other 8,976 records were lost."""

    class Later(Operator):
        def on_batch(self, port, batch):
            if port == 1:
                self.emit(list(range(10_000)))
                self.emit(["after"])
            else:
                self.context.kernel.spawn(self._later())

        async def _later(self):
            await asyncio.sleep(0)
            self.on_batch(1, None)

    seen = []
    flow = Dataflow("later")
    flow.from_iterable([0]).apply(Later).apply(lambda: Recorder(seen))
    run(flow)
    assert [record for record, _ in seen] == [*range(10_000), "after"]
