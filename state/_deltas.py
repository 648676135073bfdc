"""A kernel's snapshot put back together from its chain: a whole one (the
base) and the deltas of the epochs after it, in order.

A kernel's snapshot is a pickled `{instance index: part}`, a part being
ENDED (a str) or a pickled tuple whose last item is the operator's snapshot
(`Instance.snapshot_part`). Only the default `Operator.on_epoch` makes
deltas: its snapshot is `{state name: whole dict or KeyedDelta}` (a state
whose operator tracks the keys it writes, `state/_keyed.py`). A delta is
relative to the same instance's snapshot of the epoch before, on the same
kernel, so the chain is applied epoch by epoch; a part with no delta in it
replaces what came before.

Only the parts that hold deltas (and their bases) are unpickled: the rest
stay as they were written, so a resumed run meets their classes (and any
error reading them, naming the step) where it always did. A consumer in
this process takes the patched parts as they are (`materialised_parts`: a
`Parts`, each patched part its tuple), not pickled again to be unpickled at
once (`kernel.runtime._epochs.snapshot_parts`, `unpickled_part`): that
pickling made a resume from a chain cost 2.7 times a whole snapshot's.
"""

from __future__ import annotations

import pickle

from ._keyed import KeyedDelta


class BrokenChain(Exception):
    """A chain whose base holds a delta: the store's record of which
    snapshots are deltas (its `deltas` table, which no checksum covers) was
    damaged, and a delta was taken for the whole snapshot it applies to."""


def holds_deltas(snapshot) -> bool:
    return isinstance(snapshot, dict) and any(value.__class__ is KeyedDelta for value in snapshot.values())


def blob_holds_deltas(blob: bytes) -> bool:
    """Whether a kernel's snapshot as stored (`{instance index: part}`,
    pickled) has a part holding a delta. False where a part does not read
    back: its own restore says why."""
    try:
        for part in pickle.loads(blob).values():
            if part.__class__ is bytes and KeyedDelta.__name__.encode() in part and \
                    holds_deltas(pickle.loads(part)[-1]):
                return True
    except Exception:
        return False
    return False


class Parts(dict):
    """A kernel's whole snapshot read back in this process, `{instance index:
    part}`: a part patched by deltas is its unpickled tuple, every other one
    as written (pickled, or ENDED). Never crosses a process but by fork."""


def materialise(blobs: list[bytes]) -> bytes:
    """The whole kernel snapshot of the last epoch of `blobs` (its chain:
    the base first, then every epoch after it up to that one), pickled."""
    parts = materialised_parts(blobs)
    return pickle.dumps({index: pickle.dumps(part, protocol=5) if part.__class__ is tuple else part
                         for index, part in parts.items()}, protocol=5)


def materialised_parts(blobs: list[bytes]) -> Parts:
    """`materialise`'s snapshot as its `Parts`, the patched ones unpickled."""
    parts = Parts(pickle.loads(blobs[0]))
    applied: dict = {}  # instance index -> its part, unpickled, with deltas applied
    for blob in blobs[1:]:
        for index, part in pickle.loads(blob).items():
            if part.__class__ is bytes:
                unpickled = pickle.loads(part)
                snapshot = unpickled[-1]
                if holds_deltas(snapshot):
                    before = applied.get(index)
                    if before is None:
                        before = pickle.loads(parts[index])
                        if holds_deltas(before[-1]):  # (no whole base: "no attribute 'update'")
                            raise BrokenChain(f"the snapshot its chain starts at holds a delta of step part "
                                              f"{index}, not the whole state")
                    whole = {name: value.applied_to(before[-1][name]) if value.__class__ is KeyedDelta
                             else value for name, value in snapshot.items()}
                    applied[index] = (*unpickled[:-1], whole)
                    continue
            parts[index] = part
            applied.pop(index, None)
    parts.update(applied)
    return parts
