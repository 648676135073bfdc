"""Event-time windows over keyed streams, and windowed joins.

`Tumbling(size)`, `Sliding(size, step)` and `Session(gap)` say which windows
an event belongs to; `WindowAggregate` keeps one accumulator per key and
window and emits `(key, window, result)` once the input watermark passes the
window's end; `WindowJoin` pairs the two sides' values of a key and window.

Where things live: `_specs` (the specs; each builds the strategy that keeps
its kind of window, `_aligned` for tumbling and sliding windows by number,
`_sessions`; `_strategy` says what a strategy does), `_aggregations`,
`_windowing` (what the window operators share), `_aggregate`, `_join`, and a
windowed aggregate split around the exchange: `_combiner` and the partial
half's `_pass_on` policy. `Window` and a session's raw values are defined in
`operators/_windows.py`, the module path they pickle by.

This package imports `kernel.dataflow` (the operator protocol, errors) and
`kernel.state`; never `kernel.net` or the runtime.

Conventions (the tests' brute-force references use the same ones):

* A window is half-open, `[start, end)`. A watermark `w` promises that no
  more events with a timestamp below `w` will come, so a window is complete,
  and emitted, once the input watermark reaches its end (`w >= end`).
* Tumbling windows start at multiples of `size`; sliding windows at
  multiples of `step` (an event is in every window with
  `start <= t < start + size`). A session starts at its first event and ends
  at its last event plus `gap`; an event joins a session when it comes less
  than `gap` after the session's previous event, or less than `gap` before
  its first, and an event that bridges two sessions merges them.
* An event is late when every window it belongs to has been emitted already
  (for sliding windows: it still counts in those of its windows that are
  open). Late events are dropped and counted, or, with `late=True`, passed
  on in `LateBatch`es that the facade routes to a side stream.
* Results of one watermark step come out by window end, then window start,
  then key in first-seen order. `fold` and `reduce` see a window's values in
  arrival order; `collect` gives them in timestamp order (ties in arrival
  order).
"""

from .._windows import Window
from ._aggregate import WindowAggregate
from ._aggregations import (
    Aggregation,
    CollectAggregation,
    CountAggregation,
    FoldAggregation,
    ReduceAggregation,
    SumAggregation,
    TopAggregation,
)
from ._combiner import WindowMerge, window_combiner
from ._join import WindowJoin
from ._specs import Session, Sliding, Tumbling, WindowKind, check_late, check_window
from ._windowing import LateBatch, SelectBatches

__all__ = [
    "Aggregation",
    "CollectAggregation",
    "CountAggregation",
    "FoldAggregation",
    "LateBatch",
    "ReduceAggregation",
    "SelectBatches",
    "Session",
    "Sliding",
    "SumAggregation",
    "TopAggregation",
    "Tumbling",
    "Window",
    "WindowAggregate",
    "WindowJoin",
    "WindowKind",
    "WindowMerge",
    "check_late",
    "check_window",
    "window_combiner",
]
