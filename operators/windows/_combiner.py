"""A windowed aggregate split around the exchange: each kernel's partial
half (`WindowAggregate(flat=True)`, see `_pass_on.py` for when it passes
records on instead) and the owner's half, `WindowMerge`."""

from __future__ import annotations

from kernel.dataflow._errors import OperatorError
from kernel.dataflow._operator import TimedBatch

from ._aggregate import WindowAggregate
from ._aggregations import Aggregation


class WindowMerge(WindowAggregate):
    """The owner's half of a windowed aggregate split around an exchange.
    Each kernel's partial half (`WindowAggregate(flat=True)`) sends either
    `(key, j, partial)` for window number `j` (plain lists), merged here with
    `combine`, or its records unaggregated (`TimedBatch`es), aggregated here.
    Results go out once this kernel's watermark, the minimum over every
    kernel, passes a window's end.
    A kernel decides which of its events are late by its own watermark, sends
    a window's partial before the watermark that closes it, and passes on only
    records that no window has closed on yet there; so in order, nothing that
    comes here is late. But a kernel whose inputs were all idle lags behind:
    the frontier here moved on without it, and what it sends when it wakes
    may be for windows already emitted here. Those are late here, as they
    would be on one kernel, and are dropped and counted (a partial as one
    event: it does not say how many it stands for), never emitted twice."""

    def __init__(self, window, aggregation: Aggregation, combine) -> None:
        super().__init__(window, aggregation)
        self.combine = combine

    def on_batch(self, port, batch):
        frontier = self._frontier
        if batch.__class__ is TimedBatch:  # records a partial half passed on
            self._windows.add(port, batch, batch.timestamps, frontier, self._late_out)
            self._flush()  # count the late ones now: a snapshot may come before the next watermark
            return
        # partials: the window numbers of AlignedWindows (only they pre-aggregate)
        self.late += self._windows.merge_partials(batch, frontier, self.combine, self._partial_error)

    def fuse_upstream(self, upstream):
        return None  # its input is partials from an exchange, never a map_values' pairs

    def _partial_error(self, exc, record):
        # `record` is a partial `(key, j, acc)`: j is an internal window
        # number, so the record is named as the user's function got it,
        # `(key, value)`, and the hint says which window the value sums up
        key, j, partial = record
        window = self._windows.window(j)
        return OperatorError.wrap(
            self.name, self.aggregation.function or "merge", exc, record=(key, partial),
            hint=f"the value is another kernel's partial {self.aggregation.name} of window {window!r} "
                 f"(windowed count, sum and reduce combine each kernel's values before the exchange)")


def window_combiner(window, aggregation: Aggregation, late: bool):
    """(partial, merge) factories when the aggregate can pre-aggregate per
    kernel before the exchange: windows that do (`pre_aggregates`: tumbling,
    sliding), an aggregation whose accumulators combine and are their own
    result (`combine()`: count, sum, reduce), late events not routed (a late
    side stream must stay on its kernel). Otherwise None."""
    combine = aggregation.combine()
    if late or not window.pre_aggregates or combine is None:
        return None
    return (
        lambda: WindowAggregate(window, aggregation, late=False, flat=True),
        lambda: WindowMerge(window, aggregation, combine),
    )
