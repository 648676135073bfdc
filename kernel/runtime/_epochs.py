"""Epochs on one kernel: when to start one, when this kernel's part is whole.

Every `interval` seconds of the kernel's clock the runtime injects
`EpochMarker(n)` after the current batch of every live source, taking the
source's snapshot (its position) at that instant. Markers travel in band; an
operator snapshots when the marker has come on all its open inputs (the
runtime holds back what arrives behind a marker on the inputs that already
delivered it: aligned snapshots, as Chandy-Lamport and Flink). Each
instance's part is pickled at once, so later changes cannot leak into it.

This kernel's snapshot of epoch n is whole when every instance has given its
part for n or has ended (an ended instance's part says so: it stays ended in
a resumed run). Whole snapshots go, in epoch order, to `durable(epoch, blob)`
(the coordinator writes them to the store); when every instance has ended,
`finished(blob)` gets the last one. The coordinator calls the runtime's
`commit(epoch)` once an epoch is complete on every kernel.

Incremental snapshots: where a kernel has keyed state whose operator
tracks the keys it writes (`state/_keyed.py`), its epochs are bases (every
state whole) and deltas (such states hold only the keys written since the
epoch before: a `DeltaSnapshot`, which the store reads back through its
chain). Which epoch is a base is decided as it starts (`take_epoch`), so
that every instance snapshots it alike: the first of a run (its states
are fresh or restored) and every `CHAIN`-th after it. The rule is the
epoch's number alone, so every kernel and every process of a cluster
(which all start a run at the same epoch) take their bases at the same
epochs: the fallback the store keeps where the two newest complete
epochs share a chain (`SnapshotStore._fallback`) is then the same epoch
on all of them, and a corrupt link on one leaves an epoch that is intact
on every one. (Bases decided by each kernel from the bytes it had
written put them at different epochs: a cluster could find no epoch
intact everywhere, and start afresh.) A state stores itself whole in a
delta epoch where more than 1/CHAIN of its keys were written
(`state/_keyed.py`), so a resume reads at most about twice a base, in at
most CHAIN snapshots.
"""

from __future__ import annotations

import pickle

from kernel.dataflow._errors import PASSES_THROUGH, OperatorError

ENDED = "ended"  # an instance's part once it has ended


class Ended(str):
    """ENDED, with what an operator that had ended keeps for a resumed run
    (its `ended_snapshot()`: a file source's count of the malformed lines it
    skipped, which its run's `skipped_count` adds up; plain ENDED left them
    out of a resumed run's count). Equal to ENDED, so it stands for it
    wherever a part is compared with it."""

    def __new__(cls, snapshot):
        self = super().__new__(cls, ENDED)
        self.snapshot = snapshot
        return self

    def __reduce__(self):
        return Ended, (self.snapshot,)

# How many epochs a kernel takes past the newest one complete on every
# kernel: epoch n starts there only once n - AHEAD is complete. Each kernel
# starts epochs on its own timer, and without a bound one that another
# kernel or a loop holds back (a loop passes markers in only between runs)
# piled up snapshots that no other kernel had: a crash then left nothing
# recent to resume from however many were written; and on one kernel,
# snapshots taken faster than its writer wrote them queued in memory.
# Two, not one (Flink's default of one checkpoint at a time), so that the
# next epoch aligns while the last one is written and gathered.
AHEAD = 2

# Epochs in a chain (a base and its deltas): a base every 20 s of one-second
# epochs; `state._keyed.WHOLE_PAST` is the same number (a state written
# over more than 1/CHAIN of its keys is whole in a delta epoch).
CHAIN = 20


class DeltaSnapshot(bytes):
    """A kernel's snapshot that is a delta on its snapshot of the epoch
    before (the store reads it back through its chain)."""

    __slots__ = ()
    is_delta = True

UNPICKLABLE_STATE = (
    "with a state_dir every step's state is pickled at each epoch (its snapshot): keyed state "
    "values, stateful_map's state and what a custom operator's on_epoch returns must be picklable "
    "(no locks, sockets, open files or lambdas)"
)
UNREADABLE_STATE = (
    "the snapshot this run resumes from holds this step's state as the run that wrote it pickled "
    "it: every class in it must be importable under the name it had then (a class renamed or "
    "moved since: give it back its name to resume, or move the state_dir aside to run afresh)"
)


def pickled_part(step: str, part) -> bytes:
    """A step's part of a kernel's snapshot, pickled; an OperatorError naming
    the step where its state cannot be."""
    try:
        return pickle.dumps(part, protocol=5)
    except PASSES_THROUGH:
        raise
    except BaseException as exc:  # TypeError, PicklingError, AttributeError (a local class), anything
        where = _unpicklable_in(part)
        hint = UNPICKLABLE_STATE if where is None else f"{where}\n  {UNPICKLABLE_STATE}"
        raise OperatorError.wrap(step, "pickle.dumps", exc, has_record=False, hint=hint) from exc


_CONTAINERS = (dict, list, tuple)  # (a set's elements have no place to name)
# Containers followed down at most: state nested deeper than pickle's
# recursion allows (a linked list of tuples) failed at every level, and each
# level's pickling went as deep as it could: seconds, and a path of
# thousands of indices in the error.
_DEEPEST = 12


def _pickles(value) -> bool:
    try:
        pickle.dumps(value, protocol=5)
    except PASSES_THROUGH:
        raise
    except BaseException:  # (as pickled_part: anything a __reduce__ raises)
        return False
    return True


def _type_name(value) -> str:
    kind = type(value)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _unpicklable_in(part) -> str | None:
    """Where in a step's part its pickling failed, for the error (only then:
    each value on the way down is pickled alone, the first that fails is
    followed, so the cost is the part's size times its depth): the key
    whose state does not pickle (the innermost dict key on the way: a
    record's key in keyed state, windows, join buffers) and the path to the
    value, `['states'][2]`; or the dict key that does not pickle itself.
    None where nothing narrower than the whole part fails (or pickling a
    piece raises what passes through)."""
    from kernel.dataflow._errors import describe_record

    path: list = []  # (container, index or key)
    here = part
    bad_key = None
    on_path = set()  # (a container that holds itself, or its holder, is not followed round again)
    try:
        while isinstance(here, _CONTAINERS) and len(path) < _DEEPEST:
            on_path.add(id(here))
            items = here.items() if isinstance(here, dict) else enumerate(here)
            failing = next(((index, value) for index, value in items
                            if id(value) not in on_path and not _pickles(value)), None)
            if failing is None:  # (every value pickles alone: a dict's key, or the container itself)
                if isinstance(here, dict):
                    bad_key = next((key for key in here if not _pickles(key)), None)
                break
            path.append((here, failing[0]))
            here = failing[1]
    except PASSES_THROUGH:
        return None
    while path and not isinstance(path[0][0], dict):  # (the runtime's wrapping of the operator's snapshot)
        path.pop(0)
    at = "".join(f"[{describe_record(index)}]" for _, index in path)
    if bad_key is not None:
        where = f"a key of {at} in the step's snapshot" if at else "a key of the step's snapshot"
        return f"the key {describe_record(bad_key)} does not pickle (a {_type_name(bad_key)}, {where})"
    if not path:
        return None
    keys = [index for container, index in path if isinstance(container, dict)]
    return (f"the state under key {describe_record(keys[-1])} does not pickle "
            f"(a {_type_name(here)}, at {at} in the step's snapshot)")


def snapshot_parts(snapshot) -> dict:
    """A kernel's snapshot as the store gives it to this process, `{instance
    index: part}`: a whole one pickled, or one put together from a chain of
    deltas already read back (`state/_deltas.py`'s `Parts`, a dict)."""
    return snapshot if isinstance(snapshot, dict) else pickle.loads(snapshot)


def unpickled_part(step: str, blob: bytes | tuple):
    """`pickled_part` read back in a resumed run; an OperatorError naming the
    step where a class its state holds is gone. A tuple is a part a chain's
    deltas patched, read back already (`snapshot_parts`)."""
    if blob.__class__ is tuple:
        return blob
    try:
        return pickle.loads(blob)
    except PASSES_THROUGH:
        raise
    except BaseException as exc:  # AttributeError, ModuleNotFoundError, UnpicklingError, a __setstate__'s
        raise OperatorError.wrap(step, "pickle.loads", exc, has_record=False,
                                 hint=UNREADABLE_STATE) from exc


class EpochTracker:
    def __init__(self, instances: int, durable, finished, first_epoch: int = 1, deltas: bool = False) -> None:
        self._instances = instances
        self._durable = durable
        self._finished = finished
        self.next_epoch = first_epoch
        # incremental snapshots (see the module): whether any state is
        # tracked; the run's first epoch (a base, as every CHAIN-th after it)
        self._deltas = deltas
        self._first = first_epoch
        self._parts: dict[int, dict[int, bytes | str]] = {}
        self._ended: dict[int, str] = {}  # instance index -> its part (ENDED, or an `Ended`)
        self._flushed = first_epoch - 1  # epochs up to this one went to `durable`

    def may_take(self, complete: int) -> bool:
        """Whether the next epoch may start, `complete` being the newest
        epoch complete on every kernel (`AHEAD`)."""
        return self.next_epoch - complete <= AHEAD

    def take_epoch(self) -> int:
        """The number of the next epoch to inject. Every kernel injects every
        number in turn, at its own pace: an operator fed by two kernels
        aligns on the same number from both (the faster one waits)."""
        epoch = self.next_epoch
        self.next_epoch += 1
        return epoch

    def is_base(self, epoch: int) -> bool:
        """Whether every state's snapshot of `epoch` is to be whole: by its
        number alone (see the module), so also an epoch this kernel did not
        take (a kernel whose sources have all ended takes none, and its
        steps align on the markers of the other kernels' sources)."""
        return not self._deltas or (epoch - self._first) % CHAIN == 0

    def part(self, index: int, epoch: int, blob: bytes) -> None:
        """Instance `index` has aligned on `epoch`: its snapshot (`pickled_part`)."""
        self._epoch(epoch)[index] = blob
        self._flush()

    def ended(self, index: int, part: str = ENDED) -> None:
        """Instance `index` has ended: `part` (ENDED, or an `Ended`) stands
        for it in every epoch it has not aligned on."""
        self._ended[index] = part
        for parts in self._parts.values():
            parts.setdefault(index, part)
        self._flush()
        if len(self._ended) == self._instances:
            self._finished(pickle.dumps(dict(self._ended), protocol=5))

    def _epoch(self, epoch: int) -> dict:
        parts = self._parts.get(epoch)
        if parts is None:
            parts = self._parts[epoch] = dict(self._ended)
        return parts

    def _flush(self) -> None:
        while (parts := self._parts.get(self._flushed + 1)) is not None and len(parts) == self._instances:
            epoch = self._flushed + 1
            del self._parts[epoch]
            self._flushed = epoch
            blob = pickle.dumps(parts, protocol=5)
            if not self.is_base(epoch):
                blob = DeltaSnapshot(blob)
            self._durable(epoch, blob)
