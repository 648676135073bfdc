"""Keyed state for mid-level operators (Arcon's ValueIndex, MapIndex and
AppenderIndex).

A state object belongs to one operator instance and is created in its
`open()`; it is scoped by key: the operator reads and writes the entry of the
key it is handling. Each kind *is* a `dict` keyed by the record's key, so
operators keep C-speed dict operations on their hot paths
(`collections._count_elements` still takes the fast path on a `ValueState`):

    from state import value_state, map_state, list_state

    class Totals(Operator):
        def open(self, context):
            self.totals = value_state(self, "totals")   # key -> value
            self.seen = map_state(self, "seen")         # key -> {field: value}
            self.log = list_state(self, "log")          # key -> [values]

Creating a state registers it on the operator under its name; the kernel's
epoch snapshots then take every registered state (`Operator.on_epoch`) and a
recovered run puts it back (`Operator.restore`), so an operator that keeps
everything it needs in keyed state is recoverable with no more code. Names
are unique per operator.

Incremental snapshots: an operator that tells its state which keys each
batch wrote or deleted (`track_writes()` in `open`, then `written(keys)`
per batch: the built-in aggregates do) has epochs whose snapshot of that
state holds only those keys (a `KeyedDelta`), on the last whole one. The
keys are noted per batch, not per write: a `__setitem__` of our own would
take the dicts off `collections._count_elements`' C fast path, and a
reference to the batch's key list costs one append a batch (the keys are
read at the epoch). A state nobody tracks, a user's, has whole snapshots.
"""

from __future__ import annotations

from operator import itemgetter

_first = itemgetter(0)
# A state written over more than 1/WHOLE_PAST of its keys since the last
# epoch snapshots itself whole (in a delta epoch too: the reader takes a
# whole state as it is), so a chain of `kernel.runtime._epochs.CHAIN`
# (the same number) snapshots reads at most about twice a base. The few
# keys past that fraction a small state may write before it is whole:
WHOLE_PAST = 20
_FEW = 64

_WHOLE = None  # `_written` of a state whose next snapshot is whole (cleared, restored, or written all over)


class KeyedDelta:
    """One epoch's change to a tracked keyed state since the epoch before
    on the same kernel: the keys written (with their values as of this
    epoch) and the keys deleted. What the store reads back applies it to
    the state's snapshot of the epoch before (`state/_deltas.py`)."""

    __slots__ = ("changed", "deleted")

    def __init__(self, changed: dict, deleted: list) -> None:
        self.changed = changed
        self.deleted = deleted

    def __reduce__(self):
        return KeyedDelta, (self.changed, self.deleted)

    def applied_to(self, before: dict) -> dict:
        """`before` (a whole snapshot of the state, owned by the caller) as of this epoch."""
        before.update(self.changed)
        for key in self.deleted:
            before.pop(key, None)
        return before

    def __repr__(self) -> str:
        return f"KeyedDelta({len(self.changed)} written, {len(self.deleted)} deleted)"


class _KeyedState(dict):
    """A dict keyed by record key, registered on its operator by name."""

    # _tracked: whether an operator reports every key it writes (`written`);
    # _written: the batches' lists of keys written since the last snapshot, or
    # _WHOLE; _noted: how many keys they hold (past len(self): the next
    # snapshot is whole, and the batches are let go); _size: len(self) at
    # the last snapshot (`_unreported`).
    __slots__ = ("_noted", "_size", "_tracked", "_written", "name")
    kind = "state"

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self._tracked = False
        self._written = _WHOLE
        self._noted = self._size = 0

    def snapshot(self) -> dict:
        """A copy that later changes to this state do not touch."""
        return dict(self)

    def restore(self, data: dict) -> None:
        self.clear()
        self.update(data)

    # -- incremental snapshots -----------------------------------------------------

    def track_writes(self) -> None:
        """The operator will call `written` with every key it writes or
        deletes (other than by `clear()`): its epochs may then snapshot
        only those keys (`epoch_snapshot`)."""
        self._tracked = True

    def written(self, keys: list, pairs: bool = False) -> None:
        """The keys of a batch were written or deleted (`pairs`: `keys` is
        a batch of `(key, value)` pairs). Keeps a reference to a list of
        keys: it must not change afterwards (a batch never does). Of pairs,
        only their keys are kept (the values may be whole records: a fold on
        several kernels gets `(key, record)`, and held to the epoch they
        doubled its memory; the keys are taken now, not at the epoch)."""
        written = self._written
        if written is not _WHOLE:
            self._noted += len(keys)
            if self._noted <= len(self) + 1024:
                written.append(list(map(_first, keys)) if pairs else keys)
            else:  # most keys written: the next snapshot is whole anyway
                self._written = _WHOLE

    def clear(self) -> None:
        super().clear()
        self._written = _WHOLE

    def take_whole(self) -> None:
        """The next `epoch_snapshot` is whole (a base of its kernel's chain)."""
        self._written = _WHOLE

    def epoch_snapshot(self):
        """This epoch's snapshot: whole (`snapshot()`), or a `KeyedDelta`
        of the keys written since the last one where tracked."""
        written, size = self._written, self._size
        self._size = len(self)
        if self._tracked:
            self._written, self._noted = [], 0
        if written is _WHOLE or not self._tracked:
            return self.snapshot()
        keys: set = set()
        for batch in written:
            keys.update(batch)
        if len(keys) > len(self) // WHOLE_PAST + _FEW:  # (whole costs little more: see WHOLE_PAST)
            return self.snapshot()
        copy = self._copy_value
        changed = {key: copy(self[key]) for key in keys if key in self}
        deleted = [key for key in keys if key not in changed]
        self._unreported(len(self) - size, changed, deleted)
        return KeyedDelta(changed, deleted)

    def _unreported(self, grown: int, changed: dict, deleted: list) -> None:
        """Refuse a delta that misses keys the operator added or deleted
        without telling `written` (a resume would silently lose them): the
        state grew by more keys than were reported written, or shrank by
        more than were reported deleted. (A value changed under a key that
        was not reported cannot be seen: only the operator knows.)"""
        if grown > len(changed) or -grown > len(deleted):
            raise RuntimeError(  # (the step's on_epoch failed: the kernel names the step)
                f"keyed state {self.name!r}: {abs(grown)} keys {'added' if grown > 0 else 'deleted'} "
                f"since the last epoch, {len(changed) if grown > 0 else len(deleted)} told to written() "
                "after track_writes(): a snapshot would lose the rest. Call written(keys) after every "
                "batch with each key it wrote or deleted, or leave track_writes() out")

    @staticmethod
    def _copy_value(value):
        return value  # (as `snapshot`: the value itself, pickled at once)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {len(self)} keys)"


class ValueState(_KeyedState):
    """One value per key: `s[key]`, `s.get(key)`, `s[key] = v`, `del s[key]`."""

    __slots__ = ()
    kind = "value"


class MapState(_KeyedState):
    """A dict per key: `s.entry(key)[field] = v`."""

    __slots__ = ()
    kind = "map"

    def entry(self, key) -> dict:
        """The key's dict, created empty on first use."""
        inner = self.get(key)
        if inner is None:
            inner = self[key] = {}
        return inner

    def snapshot(self) -> dict:
        return {key: dict(inner) for key, inner in self.items()}

    _copy_value = staticmethod(dict)


class ListState(_KeyedState):
    """A list per key, appended to: `s.append(key, value)`, `s.get(key, [])`."""

    __slots__ = ()
    kind = "list"

    def append(self, key, value) -> None:
        items = self.get(key)
        if items is None:
            self[key] = [value]
        else:
            items.append(value)

    def snapshot(self) -> dict:
        return {key: list(items) for key, items in self.items()}

    _copy_value = staticmethod(list)


def _register(operator, state: _KeyedState) -> _KeyedState:
    return operator.register_state(state)  # Operator.register_state: its snapshots take it


def value_state(operator, name: str) -> ValueState:
    """A `ValueState` registered on `operator` (call it in `open`)."""
    return _register(operator, ValueState(name))


def map_state(operator, name: str) -> MapState:
    """A `MapState` registered on `operator` (call it in `open`)."""
    return _register(operator, MapState(name))


def list_state(operator, name: str) -> ListState:
    """A `ListState` registered on `operator` (call it in `open`)."""
    return _register(operator, ListState(name))
