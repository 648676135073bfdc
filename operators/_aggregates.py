"""Per-key aggregates over a keyed stream of `(key, value)` pairs.

On a bounded input each emits `(key, result)` for every key when the input
ends, keys in first-seen order. The loops are explicit so a failure names its
record directly.

Fused with the `key_by` right before it (`Operator.fuse_upstream`: on one
kernel, and as the combiner's partial half before an exchange), an
aggregate takes the records themselves: their keys are computed in one pass
and no `(key, record)` pair is built (word count's 2,000,000 pairs were a
third of its time on one kernel: benches/pipelines.py). The errors are
key_by's and the aggregate's own, as if the two ran apart.

Inside a loop (`Stream.iterate`) a final aggregate emits at the end of
every round (`on_round`), over that round's records.

`emit="updates"` (running aggregates, for endless inputs): after each batch,
`(key, value)` for every key the batch changed, in the order the batch first
changed them, and nothing more at the end. Split around an exchange, the
partial half then runs with `emit="deltas"`: it aggregates one batch, hands
on that batch's partials and keeps nothing, so the owner's updates never
wait on an input that does not end.
"""

from __future__ import annotations

import copy
from collections import _count_elements
from operator import itemgetter

from kernel.state import value_state

from kernel.dataflow._errors import PASSES_THROUGH
from kernel.dataflow._operator import Operator

from ._calls import (
    emit_in_batches,
    emit_in_pieces,
    failing_index,
    keyed_error,
    over_batch,
    start_values,
    user_error,
)
from ._stateless import KeyBy, _keys, _keys_fast, columns_after

_first = itemgetter(0)


def _then_cleared(state: dict):
    """`state`'s items, then `state` emptied, once all are read."""
    yield from state.items()
    state.clear()
_MISSING = object()


EMIT_MODES = ("final", "updates")


def check_emit(emit) -> None:
    if emit not in EMIT_MODES:
        raise ValueError(f"emit must be 'final' (when the input ends) or 'updates' (after each batch), "
                         f"got {emit!r}")


_IMMUTABLE = frozenset({int, float, str, bytes, bool, type(None), complex})


def _as_it_is_now(value):
    """An update's value as it is after this batch: a fold or reduce whose
    function changes its accumulator in place (appends to a list) would
    otherwise hand on the accumulator itself, and each update already
    handed on would change with the next batches (in a `collect()` on one
    kernel; not once pickled to another: the result depended on the sink
    and the kernel count). Numbers, strings and tuples of them go as they
    are; anything else as a deep copy (as it is, where it cannot be copied:
    a lock)."""
    cls = value.__class__
    if cls in _IMMUTABLE or (cls is tuple and all(item.__class__ in _IMMUTABLE for item in value)):
        return value
    try:
        return copy.deepcopy(value)
    except Exception:
        return value


class _Aggregate(Operator):
    def __init__(self, emit: str = "final") -> None:
        if emit != "deltas":  # the partial half of an updating aggregate (internal)
            check_emit(emit)
        self.emit_mode = emit

    def open(self, context):
        # keyed state: taken by epoch snapshots, put back on recovery
        self.state = value_state(self, "accumulators")
        # Every write goes through `_add_batch`, which tells the state the
        # batch's keys: its epochs snapshot only the keys written since the
        # last (`state/_keyed.py`; clearing it is seen by the state itself).
        self.state.track_writes()
        self._add_keys = {"final": self._add, "updates": self._add_and_update,
                          "deltas": self._add_and_hand_on}[self.emit_mode]

    def _add_batch(self, keys: list, values: list | None) -> None:
        self._add_keys(keys, values)
        self.state.written(keys, values is None)

    def on_end(self):
        if self.emit_mode == "final":  # (nothing reaches it after: its state stays as it is)
            return emit_in_pieces(self.emit, self.state.items(), len(self.state))
        return None

    def on_round(self, round):
        # Inside a loop each round is its own time (timely's product
        # timestamps): its results cover its records, and go out when it is
        # complete, before its end is passed on (in pieces if many: the
        # round's marker waits behind them, and nothing of the next round
        # comes before it, so the state is read as it goes, then cleared).
        if self.emit_mode == "final":
            return emit_in_pieces(self.emit, _then_cleared(self.state), len(self.state))
        return None

    def on_batch(self, port, batch):
        self._add_batch(batch, None)

    def flush_partials(self):
        # As a combiner's partial half, at each epoch marker: hand on what
        # it holds, so no snapshot keeps partials (a resumed run may have
        # no partial half to give them to); the owner merges them.
        if self.state:
            emit_in_batches(self.emit, self.state.items())
            self.state.clear()

    def fuse_upstream(self, upstream):
        if type(upstream) is not KeyBy:  # a map_values (and the key_by before it): keys and values
            return columns_after(upstream, lambda _port, keys, values, _batch: self._add_batch(keys, values))
        key_of, key_step, key_fast = upstream.fn, upstream.name, upstream.fast

        def key_by_then_aggregate(port, batch):
            # the keys as key_by computes them: its errors, naming its step
            # (_add_batch is set in open, after fusion)
            self._add_batch(over_batch(key_step, key_of, batch, _keys, key_fast, _keys_fast), batch)

        return key_by_then_aggregate

    def _add_and_update(self, keys: list, values: list | None) -> None:
        self._add(keys, values)
        changed = dict.fromkeys(keys if values is not None else map(_first, keys))
        state = self.state
        emit_in_batches(self.emit, [(key, _as_it_is_now(state[key])) for key in changed])

    def _add_and_hand_on(self, keys: list, values: list | None) -> None:
        self._add(keys, values)
        emit_in_batches(self.emit, self.state.items())
        self.state.clear()

    def _add(self, keys: list, values: list | None) -> None:
        """Aggregate `values[i]` under `keys[i]`; with `values` None, `keys`
        is a batch of `(key, value)` pairs (unfused)."""
        raise NotImplementedError

    @staticmethod
    def _pairs(keys: list, values: list | None):
        # zip's tuples are reused when the loop unpacks them at once
        return iter(keys) if values is None else zip(keys, values)

    def _failed(self, fn, exc: BaseException, keys: list, values: list | None, pairs, key, value):
        """The error of `_add`'s loop over `pairs` (`_pairs`), at `(key,
        value)`: unfused, the record itself, found by where `pairs`
        stopped, since one that is no pair fails as it is unpacked, before
        `key` and `value` are its own (a loop's feedback on a keyed
        stream)."""
        if values is None:
            index = failing_index(keys, pairs)
            if index is not None:
                return keyed_error(self.name, fn, exc, keys[index])
        return keyed_error(self.name, fn, exc, (key, value))

    @staticmethod
    def _pair_at(keys: list, values: list | None, index: int):
        return keys[index] if values is None else (keys[index], values[index])


class Count(_Aggregate):
    """Number of records per key."""

    # _count_elements is C code for dicts, and a ValueState is one
    def _add(self, keys, values):
        it = iter(keys)
        try:
            _count_elements(self.state, it if values is not None else map(_first, it))
        except PASSES_THROUGH:
            raise
        except BaseException as exc:  # a key's own __hash__ or __eq__ too
            index = failing_index(keys, it)
            if index is None:
                raise user_error(self.name, "hash(key)", exc, keys, it) from exc
            raise keyed_error(self.name, "hash(key)", exc, self._pair_at(keys, values, index)) from exc


class Sum(_Aggregate):
    """Sum of the values per key (starting from the first value, so it works
    for any type with `+`)."""

    def _add(self, keys, values):
        state = self.state
        key = value = None
        pairs = self._pairs(keys, values)
        try:
            for key, value in pairs:
                if key in state:
                    state[key] = state[key] + value
                else:
                    state[key] = value
        except PASSES_THROUGH:
            raise
        except BaseException as exc:  # a value's own __add__ too
            raise self._failed("operator.add", exc, keys, values, pairs, key, value) from exc


class Reduce(_Aggregate):
    """`fn(accumulator, value)` per key, the first value as the start."""

    def __init__(self, fn, emit: str = "final") -> None:
        super().__init__(emit)
        if not callable(fn):
            raise TypeError(f"reduce needs a callable, got {fn!r}")
        self.fn = fn

    def _add(self, keys, values):
        state = self.state
        fn = self.fn
        get = state.get
        key = value = None
        pairs = self._pairs(keys, values)
        try:
            for key, value in pairs:
                acc = get(key, _MISSING)
                state[key] = value if acc is _MISSING else fn(acc, value)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._failed(fn, exc, keys, values, pairs, key, value) from exc


class Fold(_Aggregate):
    """`fn(accumulator, value)` per key, starting from `init`.

    `init` is either a zero-argument factory called once per key (`list`,
    `dict`, `set`) or a start value, copied for each key where it could
    change (`_calls.start_values`).
    """

    def __init__(self, init, fn, emit: str = "final") -> None:
        super().__init__(emit)
        if not callable(fn):
            raise TypeError(f"fold needs a callable, got {fn!r}")
        self.init = start_values(init)
        self.fn = fn

    def _add(self, keys, values):
        state = self.state
        fn = self.fn
        init = self.init
        get = state.get
        key = value = None
        pairs = self._pairs(keys, values)
        try:
            for key, value in pairs:
                acc = get(key, _MISSING)
                state[key] = fn(init() if acc is _MISSING else acc, value)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise self._failed(fn, exc, keys, values, pairs, key, value) from exc
