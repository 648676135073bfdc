"""Transports between kernels.

Inside one kernel, operators hand batches to each other as plain lists
(`kernel._runtime`). Between the kernels of one machine: `SpscRing` frames in
shared memory (`net.shm`), multiplexed per pair of kernels by
`ProcessTransport`, with keys routed by a stable hash (`Partitioner`).
Between machines: authenticated websocket links (`net._links`), one per pair
of processes, held by each process's link relay (`net._relay`). The errors a
cluster run can end with are exported here: `LinkError` and its kinds
`AuthenticationFailed`, `LinkMismatch`, `PeerLost` and `PeerFailed`.
"""

from ._batch import IDLE, EpochMarker, TimedBatch
from ._exchange import Partitioner, stable_hash
from ._transport import ProcessTransport
from .shm import Doorbell, SpscRing

_LINK_ERRORS = {"AuthenticationFailed", "LinkError", "LinkMismatch", "PeerFailed", "PeerLost"}


def __getattr__(name: str):
    # The link errors live beside aiohttp, which costs ~0.2 s to import: only
    # a cluster run (or code that catches them) pays for it.
    if name in _LINK_ERRORS:
        from . import _relay

        return getattr(_relay, name)
    raise AttributeError(f"module 'net' has no attribute {name!r}")

__all__ = [
    "IDLE",
    "AuthenticationFailed",
    "Doorbell",
    "EpochMarker",
    "LinkError",
    "LinkMismatch",
    "Partitioner",
    "PeerFailed",
    "PeerLost",
    "ProcessTransport",
    "SpscRing",
    "TimedBatch",
    "stable_hash",
]
