"""The sink the benchmarks end their pipelines in: a count per kernel,
so results are counted where they are made, not gathered item by item."""

from __future__ import annotations

from kernel import Operator


class CountRecords(Operator):
    """Counts the records it is given; emits the count when the input ends."""

    def open(self, context):
        self.n = 0

    def on_batch(self, port, batch):
        self.n += len(batch)

    def on_end(self):
        self.emit([self.n])
