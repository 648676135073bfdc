"""The dataflow model: what a flow is, independent of how it runs.

Holds the logical graph (`Graph`, `Node`, `Edge`, `Combiner`), the
mid-level operator protocol (`Operator`, `Source`), the errors a run ends
with, and the fluent API users build flows with (`Dataflow`, `Stream`,
`KeyedStream`, ... in `_api.py`).

Imports only `kernel.scheduling` (task classes) and `kernel.net`'s batch
type; `_api.py` alone also imports `kernel.operators`, whose operators its
fluent methods make (DESIGN.md's one thin exception). Never the runtime,
execution or `kernel.state`.
"""

from kernel.net._channel import EVERY_EPOCH, IDLE, EpochMarker, RoundMarker, TimedBatch

__all__ = ["EVERY_EPOCH", "IDLE", "EpochMarker", "RoundMarker", "TimedBatch"]
