"""Transports between kernels.

Inside one kernel, operators hand batches to each other as plain lists
(`kernel.runtime._runtime`). Between the kernels of one machine: `SpscRing` frames in
shared memory (`net.shm`), multiplexed per pair of kernels by
`ProcessTransport`, with keys routed by a stable hash (`Partitioner`).
Between machines: authenticated websocket links (`net._links`), one per pair
of processes, held by each process's link relay (`net._relay`). The errors a
cluster run can end with are exported here: `LinkError` and its kinds
`AuthenticationFailed`, `LinkMismatch`, `PeerLost` and `PeerFailed`.
"""

if __name__ != "kernel.net":
    # `import net` with this folder on sys.path (running from a checkout)
    # would load the package a second time, with classes of its own: be
    # `kernel.net` itself instead (as the installed aliases/net.py is).
    # The imports below then only fill the module thrown away.
    from kernel._aliases import alias

    alias(__name__)

from typing import TYPE_CHECKING

from kernel.net._channel import IDLE, EpochMarker, TimedBatch
from kernel.net._exchange import Partitioner, stable_hash
from kernel.net._protocol import LocalTransport, Receiver, Transport

if TYPE_CHECKING:
    from kernel.net._transport import ProcessTransport
    from kernel.net.shm import Doorbell, SpscRing

_LINK_ERRORS = {"AuthenticationFailed", "LinkError", "LinkMismatch", "PeerFailed", "PeerLost"}
# The transports between processes, with their codec (msgspec, ~10 ms to
# import): a run on several cores imports them, a run on one does without.
_BETWEEN_PROCESSES = {"ProcessTransport": "kernel.net._transport", "Doorbell": "kernel.net.shm",
                      "SpscRing": "kernel.net.shm"}


def __getattr__(name: str):
    # The link errors live beside aiohttp, which costs ~0.2 s to import: only
    # a cluster run (or code that catches them) pays for it.
    if name in _LINK_ERRORS:
        from kernel.net import _relay

        return getattr(_relay, name)
    if name in _BETWEEN_PROCESSES:
        import importlib

        value = getattr(importlib.import_module(_BETWEEN_PROCESSES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'net' has no attribute {name!r}")


def __dir__() -> list[str]:
    # with the lazy names (PEP 562): a REPL's completion, `dir()`, help()
    return sorted(set(globals()) | set(__all__))

__all__ = [
    "IDLE",
    "AuthenticationFailed",
    "Doorbell",
    "EpochMarker",
    "LinkError",
    "LinkMismatch",
    "LocalTransport",
    "Partitioner",
    "PeerFailed",
    "PeerLost",
    "ProcessTransport",
    "Receiver",
    "SpscRing",
    "TimedBatch",
    "Transport",
    "stable_hash",
]
