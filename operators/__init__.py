"""The operator library, written at the mid level (`Operator`, `Source`).

Users normally reach these through the fluent API (`kernel.Dataflow`); the
classes are public so custom operators can be written, composed and tested
the same way (`stream.apply(MyOperator)`).
"""

if __name__ != "kernel.operators":
    # `import operators` with this folder on sys.path (running from a checkout)
    # would load the package a second time, with classes of its own: be
    # `kernel.operators` itself instead (as the installed aliases/operators.py is).
    # The imports below then only fill the module thrown away.
    from kernel._aliases import alias

    alias(__name__)


from kernel.operators._aggregates import Count, Fold, Reduce, Sum, check_emit
from kernel.operators._distinct import Distinct, check_within
from kernel.operators._event_time import EventTimeSource, check_event_time
from kernel.operators._file_source import CHUNK_BYTES as FILE_CHUNK_BYTES
from kernel.operators._file_source import FileSource, check_file_options, list_files
from kernel.operators._files import ToFiles, file_in_the_way
from kernel.operators._join import KeyedJoin, check_ttl
from kernel.operators._partitions import PartitionSource, check_make
from kernel.operators._redis import RedisEntry, RedisStreamSource, ToRedisStream, check_redis_installed
from kernel.operators._sinks import Collect, Print, Sink
from kernel.operators._sources import (
    DEFAULT_BATCH_SIZE,
    AsyncIterableSource,
    IterableSource,
    check_batch_size,
)
from kernel.operators._stateful import StatefulMap
from kernel.operators._stateless import Filter, FlatMap, Inspect, KeyBy, Map, MapValues, Union
from kernel.operators.windows import (
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
    TopAggregation,
    Tumbling,
    Window,
    WindowAggregate,
    WindowJoin,
    WindowMerge,
    check_late,
    check_window,
    window_combiner,
)

from kernel.dataflow._operator import Operator, Source

# How the built-in operators (and the runtime around them) lay out what
# they put in epoch snapshots; a snapshot store records it and refuses a
# state_dir written with another. Raised whenever that changes: 2 =
# windowed aggregates keep their state by window number (partials
# `(key, j, acc)`), not by `Window`; 3 = the library's classes pickle under
# `kernel.*` module names (`kernel.operators...`), and flows are
# fingerprinted by their steps' kinds, not their names; 4 = keys and the
# bounded sources' records are partitioned by key group (the store records
# how many), source positions are kept per partition, and snapshots record
# their run's kernel count (a resumed run may have another); 5 = a key's
# group is the top bits of its stable hash times 2**64 / golden ratio
# (Fibonacci hashing), not the hash's residue with its bits reversed, so
# keys move to other kernels than in layout 4.
SNAPSHOT_LAYOUT = "5"

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FILE_CHUNK_BYTES",
    "SNAPSHOT_LAYOUT",
    "Aggregation",
    "AsyncIterableSource",
    "Collect",
    "CollectAggregation",
    "Count",
    "CountAggregation",
    "Distinct",
    "EventTimeSource",
    "FileSource",
    "Filter",
    "FlatMap",
    "Fold",
    "FoldAggregation",
    "Inspect",
    "IterableSource",
    "KeyBy",
    "KeyedJoin",
    "LateBatch",
    "Map",
    "MapValues",
    "Operator",
    "PartitionSource",
    "Print",
    "RedisEntry",
    "RedisStreamSource",
    "Reduce",
    "ReduceAggregation",
    "SelectBatches",
    "Session",
    "Sink",
    "Sliding",
    "Source",
    "StatefulMap",
    "Sum",
    "SumAggregation",
    "ToFiles",
    "ToRedisStream",
    "TopAggregation",
    "Tumbling",
    "Union",
    "Window",
    "WindowAggregate",
    "WindowJoin",
    "WindowMerge",
    "check_batch_size",
    "check_emit",
    "check_event_time",
    "check_file_options",
    "check_late",
    "check_make",
    "check_redis_installed",
    "check_ttl",
    "check_window",
    "check_within",
    "file_in_the_way",
    "list_files",
    "window_combiner",
]
