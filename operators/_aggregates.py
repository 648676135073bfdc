"""Per-key aggregates over a keyed stream of `(key, value)` pairs.

On a bounded input each emits `(key, result)` for every key when the input
ends, keys in first-seen order. The loops are explicit so a failure names its
record directly.
"""

from __future__ import annotations

from collections import _count_elements
from operator import itemgetter

from kernel.state import value_state

from kernel.dataflow._errors import KernelError
from kernel.dataflow._operator import Operator

from ._calls import emit_in_batches, failing_record, keyed_error, user_error

_first = itemgetter(0)
_MISSING = object()


class _Aggregate(Operator):
    def open(self, context):
        # keyed state: taken by epoch snapshots, put back on recovery
        self.state = value_state(self, "accumulators")

    def on_end(self):
        emit_in_batches(self.emit, self.state.items())


class Count(_Aggregate):
    """Number of records per key."""

    # _count_elements is C code for dicts, and a ValueState is one
    def on_batch(self, port, batch):
        it = iter(batch)
        try:
            _count_elements(self.state, map(_first, it))
        except Exception as exc:
            found, record = failing_record(batch, it)
            if not found:
                raise user_error(self.name, "hash(key)", exc, batch, it) from exc
            raise keyed_error(self.name, "hash(key)", exc, record) from exc


class Sum(_Aggregate):
    """Sum of the values per key (starting from the first value, so it works
    for any type with `+`)."""

    def on_batch(self, port, batch):
        state = self.state
        record = None
        try:
            for record in batch:
                key = record[0]
                if key in state:
                    state[key] = state[key] + record[1]
                else:
                    state[key] = record[1]
        except Exception as exc:
            raise keyed_error(self.name, "operator.add", exc, record) from exc


class Reduce(_Aggregate):
    """`fn(accumulator, value)` per key, the first value as the start."""

    def __init__(self, fn) -> None:
        if not callable(fn):
            raise TypeError(f"reduce needs a callable, got {fn!r}")
        self.fn = fn

    def on_batch(self, port, batch):
        state = self.state
        fn = self.fn
        record = None
        get = state.get
        try:
            for record in batch:
                key = record[0]
                acc = get(key, _MISSING)
                state[key] = record[1] if acc is _MISSING else fn(acc, record[1])
        except KernelError:
            raise
        except Exception as exc:
            raise keyed_error(self.name, fn, exc, record) from exc


class Fold(_Aggregate):
    """`fn(accumulator, value)` per key, starting from `init`.

    `init` is either a zero-argument factory called once per key (use `list`,
    `dict`, `set` for mutable accumulators) or an immutable start value.
    """

    def __init__(self, init, fn) -> None:
        if not callable(fn):
            raise TypeError(f"fold needs a callable, got {fn!r}")
        self.init = init if callable(init) else (lambda: init)
        self.fn = fn

    def on_batch(self, port, batch):
        state = self.state
        fn = self.fn
        init = self.init
        record = None
        get = state.get
        try:
            for record in batch:
                key = record[0]
                acc = get(key, _MISSING)
                state[key] = fn(init() if acc is _MISSING else acc, record[1])
        except KernelError:
            raise
        except Exception as exc:
            raise keyed_error(self.name, fn, exc, record) from exc
