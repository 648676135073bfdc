"""A kernel process's results, on their way back to the caller.

What `collect()` gathered leaves each kernel process as one encoded batch
(`net._codec`): msgpack where the round trip is exact (scalars, tuples of
scalars, and as columns a windowed aggregate's `(key, Window, result)`),
pickle otherwise, so a record comes back exactly as it was. The
caller's process decodes each batch once, after the run.

Why not pickle the results as they are, with the rest of the kernel's
answer: for tuples of plain scalars, pickle costs ~3x msgpack both ways,
and the caller's process decodes every kernel's results one after the
other, after the kernels have ended (`python -m benches.collect`). A record
that cannot be pickled fails here, named with its step, instead of failing
the kernel's answer as a whole.
"""

from __future__ import annotations

from collections.abc import Callable

from kernel.dataflow._errors import KernelError
from kernel.net._protocol import UnpicklableRecord

# (net._codec, and msgspec with it, imported by the kernel processes' `pack` and the
# caller's `decode`: a run on one kernel, in the caller's process, does without them)


class EncodedItems:
    """One step's collected records, encoded (`kind`, `body`) by the codec."""

    __slots__ = ("body", "kind")

    def __init__(self, kind: int, body: bytes) -> None:
        self.kind = kind
        self.body = body

    def __reduce__(self):
        return EncodedItems, (self.kind, self.body)

    def decode(self) -> list:
        from kernel.net._codec import decode

        return decode(self.kind, self.body)


class ResultNotPicklable(KernelError):
    """A record a step collected cannot go back to the caller's process."""


def pack(results: dict, names: dict[int, str]) -> dict:
    """`results` (a kernel's, by node id) with each list of records encoded."""
    from kernel.net._codec import encode_batch

    packed = {}
    for node_id, value in results.items():
        if type(value) is list and value:
            try:
                value = EncodedItems(*encode_batch(value))
            except UnpicklableRecord as exc:
                record = f": {exc.record!r}" if exc.found else ""
                raise ResultNotPicklable(
                    f"{names.get(node_id, node_id)}: a record it collected cannot be pickled back to the "
                    f"caller's process ({type(exc.__cause__).__name__}: {exc.__cause__}){record}"
                ) from exc.__cause__
        packed[node_id] = value
    return packed


def unpack(per_kernel: list[dict], names: Callable[[], dict[int, str]]) -> list[dict]:
    """`pack`'s work undone, in the caller's process, for every kernel;
    `names()`, the steps' names by node id, is asked only to name a step
    whose records cannot be decoded (`python -m kernel.run`'s launcher does
    not import the pipeline file for less)."""
    return [{node_id: _decoded(value, node_id, kernel, names) for node_id, value in results.items()}
            for kernel, results in enumerate(per_kernel)]


def _decoded(value, node_id: int, kernel: int, names):
    if type(value) is not EncodedItems:
        return value
    try:
        return value.decode()
    except Exception as exc:
        # A record whose pickle does not rebuild it: the class's own error
        # (`Rec.__init__() missing 1 required positional argument`) came
        # alone, naming no step, from a flow that runs on one kernel.
        from kernel.dataflow._errors import UNRESTORABLE_RECORD

        raise ResultNotPicklable(
            f"{names().get(node_id, node_id)}: a record it collected on kernel {kernel} cannot be unpickled "
            f"in the caller's process ({type(exc).__name__}: {exc}): {UNRESTORABLE_RECORD}"
        ) from exc
