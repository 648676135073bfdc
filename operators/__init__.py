"""The operator library, written at the mid level (`Operator`, `Source`).

Users normally reach these through the fluent API (`kernel.Dataflow`); the
classes are public so custom operators can be written, composed and tested
the same way (`stream.apply(MyOperator)`).
"""

from kernel._operator import Operator, Source

from ._aggregates import Count, Fold, Reduce, Sum
from ._sinks import Collect, Print, Sink
from ._sources import DEFAULT_BATCH_SIZE, AsyncIterableSource, IterableSource, check_batch_size
from ._stateless import Filter, FlatMap, Inspect, KeyBy, Map, MapValues, Union

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "AsyncIterableSource",
    "Collect",
    "Count",
    "Filter",
    "FlatMap",
    "Fold",
    "Inspect",
    "IterableSource",
    "KeyBy",
    "Map",
    "MapValues",
    "Operator",
    "Print",
    "Reduce",
    "Sink",
    "Source",
    "Sum",
    "Union",
    "check_batch_size",
]
