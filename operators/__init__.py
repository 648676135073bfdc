"""The operator library, written at the mid level (`Operator`, `Source`).

Users normally reach these through the fluent API (`kernel.Dataflow`); the
classes are public so custom operators can be written, composed and tested
the same way (`stream.apply(MyOperator)`).
"""

from kernel._operator import Operator, Source

from ._aggregates import Count, Fold, Reduce, Sum
from ._event_time import EventTimeSource, check_event_time
from ._files import ToFiles
from ._partitions import PartitionSource, check_make
from ._sinks import Collect, Print, Sink
from ._sources import DEFAULT_BATCH_SIZE, AsyncIterableSource, IterableSource, check_batch_size
from ._stateless import Filter, FlatMap, Inspect, KeyBy, Map, MapValues, Union
from ._windows import (
    Aggregation,
    CollectAggregation,
    CountAggregation,
    FoldAggregation,
    LateBatch,
    ReduceAggregation,
    SelectBatches,
    Session,
    Sliding,
    SumAggregation,
    Tumbling,
    Window,
    WindowAggregate,
    WindowJoin,
    WindowMerge,
    check_window,
    window_combiner,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Aggregation",
    "AsyncIterableSource",
    "Collect",
    "CollectAggregation",
    "Count",
    "CountAggregation",
    "EventTimeSource",
    "Filter",
    "FlatMap",
    "Fold",
    "FoldAggregation",
    "Inspect",
    "IterableSource",
    "KeyBy",
    "LateBatch",
    "Map",
    "MapValues",
    "Operator",
    "PartitionSource",
    "Print",
    "Reduce",
    "ReduceAggregation",
    "SelectBatches",
    "Session",
    "Sink",
    "Sliding",
    "Source",
    "Sum",
    "SumAggregation",
    "ToFiles",
    "Tumbling",
    "Union",
    "Window",
    "WindowAggregate",
    "WindowJoin",
    "WindowMerge",
    "check_batch_size",
    "check_event_time",
    "check_make",
    "check_window",
    "window_combiner",
]
