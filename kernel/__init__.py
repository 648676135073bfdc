"""A thread-per-core cooperative dataflow kernel for asyncio.

    from kernel import Dataflow, run

    flow = Dataflow("wordcount")
    counts = (flow.from_iterable(lines).flat_map(str.split)
                  .key_by(lambda w: w).count().collect())
    run(flow)
    dict(counts.items)

Three levels of API: the fluent `Dataflow` (high), `Operator` / `Source`
subclasses plugged in with `stream.apply()` (mid), and `kernel.lowlevel`:
`Kernel`, `spawn`, `cooperate` (low).
"""

import kernel._logging  # noqa: F401  (a NullHandler on the library's loggers)
from kernel._facade import run, run_async

# The fluent facade imports `operators`, which imports the modules above.
from kernel.dataflow._api import (
    Collected,
    Dataflow,
    KeyedStream,
    LateCount,
    Stream,
    WindowedStream,
    WindowResults,
)
from kernel.dataflow._errors import ActivationError, KernelError, OperatorError, TaskError
from kernel.dataflow._operator import Operator, Source, TimedBatch
from kernel.execution._supervisor import KernelProcessError
from kernel.scheduling._clock import Clock, SystemClock, VirtualClock
from kernel.scheduling._kernel import Kernel, KernelContext, cooperate, current_kernel
from kernel.scheduling._scheduler import LATENCY, THROUGHPUT

__all__ = [
    "LATENCY",
    "THROUGHPUT",
    "ActivationError",
    "Clock",
    "Collected",
    "Dataflow",
    "Kernel",
    "KernelContext",
    "KernelError",
    "KernelProcessError",
    "KeyedStream",
    "LateCount",
    "Operator",
    "OperatorError",
    "Source",
    "Stream",
    "SystemClock",
    "TaskError",
    "TimedBatch",
    "VirtualClock",
    "WindowResults",
    "WindowedStream",
    "cooperate",
    "current_kernel",
    "run",
    "run_async",
]
