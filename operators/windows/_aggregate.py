"""`WindowAggregate`: one accumulator per key and window, `(key, window,
result)` out once the watermark passes the window's end; with `flat=True`,
the partial half of a window combiner."""

from __future__ import annotations

import math
from itertools import repeat

from kernel.dataflow._operator import TimedBatch

from .._stateless import columns_after
from ._aggregations import Aggregation, CountAggregation, SumAggregation
from ._pass_on import PassOnPolicy
from ._windowing import Windowing


class WindowAggregate(Windowing):
    """`(key, window, result)` per key and window of a keyed stream.

    With `flat=True` it is the partial half of a combiner (`window_combiner`):
    it emits `(key, j, acc)` for window number `j` when its own watermark
    passes the window's end, or, while its partials hardly shrink what it is
    given, passes batches on unaggregated (`PassOnPolicy`)."""

    def __init__(self, window, aggregation: Aggregation, late: bool = False, flat: bool = False) -> None:
        super().__init__(window, late)
        if flat and not window.pre_aggregates:
            raise ValueError(f"{window!r} windows cannot be pre-aggregated per kernel")
        self.aggregation = aggregation
        self.flat = flat
        self._new = aggregation.create
        self._grow = aggregation.add
        self._merge = aggregation.merge
        kind = type(aggregation)
        self._adds = {SumAggregation: "sum", CountAggregation: "count"}.get(kind)

    def open(self, context):
        super().open(context)
        self._pass_on = None
        if self.flat:
            windows = self._windows  # by number: the AlignedWindows interface
            self._pass_on = PassOnPolicy(math.ceil(windows.size / windows.step) + 1)

    # -- the partial half: pre-aggregate, or pass on when it does not pay ----------

    def on_batch(self, port, batch):
        policy = self._pass_on
        if policy is None:
            super().on_batch(port, batch)
            return
        if policy.passing and self._pass_on_whole(batch):
            policy.passed_on()
            return
        windows = self._windows
        windows.count_created()
        super().on_batch(port, batch)
        policy.aggregated(windows.created(), len(batch))

    # -- fused with the map_values (and key_by) before it --------------------------

    def fuse_upstream(self, upstream):
        """Take the `map_values` right before this window, and the `key_by`
        before that (on one kernel, or as the combiner's partial half): the
        keys and values come as two lists, no pair built, and a running sum
        or count reads them in one loop (`add_columns`)."""
        return columns_after(upstream, self._add_columns)

    def _add_columns(self, port, keys: list, values: list, batch) -> None:
        """`on_batch` for records given as columns; `batch` is what the fused
        steps were given (its timestamps are the records')."""
        stamps = self._stamps(batch)
        policy = self._pass_on
        windows = self._windows
        add = getattr(windows, "add_columns", None)
        if add is None or (policy is not None and policy.passing):
            self.on_batch(port, TimedBatch(list(zip(keys, values)), stamps))
            return
        if policy is not None:
            windows.count_created()
        add(port, keys, values, stamps, self._frontier, self._late_out)
        self._flush()
        if policy is not None:
            policy.aggregated(windows.created(), len(keys))

    def _pass_on_whole(self, batch) -> bool:
        """Emit `batch` as it is, if none of its events is (even in part) late
        here: the owner then decides nothing about lateness, and the results
        and late counts are those of pre-aggregating. An event at `t` is only
        in windows that end after `t`, so `t >= frontier` keeps them all open."""
        stamps = self._stamps(batch)
        if not stamps or min(stamps) < self._frontier:
            return False  # aggregated here, where lateness is decided
        self.emit(batch)
        return True

    def on_watermark(self, watermark):
        policy = self._pass_on
        if policy is None:
            return super().on_watermark(watermark)
        windows = self._windows
        open_windows = windows.open_windows()
        # its partials in pieces too, past LARGE_OUTPUT (every window fires
        # at once: what fired is known now)
        rest = super().on_watermark(watermark)
        policy.windows_fired(open_windows - windows.open_windows())
        return rest

    def on_idle(self):
        # The partial half's inputs all went idle: the owner stops waiting
        # for this kernel and may emit windows that a partial held here
        # belongs to, events that came in time. Send every partial now: the
        # owner merges several partials of a window as well as one.
        if not self.flat:
            return
        self._windows.fire(math.inf)  # every window, whatever its end
        self._make_closed(self._closed, self._out, self._out_stamps)
        self._flush()

    def flush_partials(self):
        # The partial half, at each epoch marker: every partial goes on
        # (as on_idle), so no snapshot holds partials; the owner merges
        # several partials of a window as well as one.
        if self.flat:
            self._windows.fire(math.inf)
            self._make_closed(self._closed, self._out, self._out_stamps)
            self._flush()

    def _results(self, key, window, acc):
        return ((key, window, self.aggregation.result(acc)),)

    def _emit_window(self, j, accs: dict) -> None:
        if self.flat:  # a partial for WindowMerge, `(key, j, acc)`, made as they go on (`_make_window`)
            self._close_window(j, accs, len(accs))
            return
        window = self._windows.window(j)
        self._close_window(window, accs, len(accs))

    def _make_window(self, window, accs: dict, out: list, stamps: list) -> None:
        if self.flat:  # `window` is its number: flat scalars cross the exchange by msgpack
            out.extend([(key, window, acc) for key, acc in accs.items()])
            return
        if self._adds is not None:  # the accumulator is the result
            out.extend([(key, window, acc) for key, acc in accs.items()])
        else:
            result = self.aggregation.result
            out.extend([(key, window, result(acc)) for key, acc in accs.items()])
        # their event time, one stamp for the window's results (C-level, not
        # a loop over them in `_emit_timed`: ~4 ms of 126,000 results)
        stamps.extend(repeat(window.max_timestamp, len(accs)))

    def _results_of(self, window, accs: dict):
        if self.flat or self._adds is not None:  # (flat: `window` is its number)
            return ((key, window, acc) for key, acc in accs.items())
        result = self.aggregation.result
        return ((key, window, result(acc)) for key, acc in accs.items())

    def _function(self):
        return self.aggregation.function or f"window {self.aggregation.name}"
