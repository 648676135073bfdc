"""Transports between kernels.

Inside one kernel, operators hand batches to each other as plain lists
(`kernel._runtime`). Between the kernels of one machine: `SpscRing` frames in
shared memory (`net.shm`), multiplexed per pair of kernels by
`ProcessTransport`, with keys routed by a stable hash (`Partitioner`).
Websocket links between machines come in a later issue.
"""

from ._batch import IDLE, EpochMarker, TimedBatch
from ._exchange import Partitioner, stable_hash
from ._transport import ProcessTransport
from .shm import Doorbell, SpscRing

__all__ = [
    "IDLE",
    "Doorbell",
    "EpochMarker",
    "Partitioner",
    "ProcessTransport",
    "SpscRing",
    "TimedBatch",
    "stable_hash",
]
