"""Record-at-a-time transforms, each over a whole batch in C-level iteration.

`map(fn, it)` and friends keep the per-record work to the user's function
call itself; a Python-level loop with `append` costs noticeably more per
record (benches/pipelines.py).
"""

from __future__ import annotations

from itertools import chain

from kernel._errors import KernelError
from kernel._operator import Operator

from ._calls import over_batch, user_error

_flatten = chain.from_iterable


def _map(fn, it):
    return list(map(fn, it))


def _filter(fn, it):
    return list(filter(fn, it))


def _flat_map(fn, it):
    return list(_flatten(map(fn, it)))


class _UserFunction(Operator):
    """An operator built around one user function."""

    def __init__(self, fn) -> None:
        if not callable(fn):
            raise TypeError(f"{type(self).__name__.lower()} needs a callable, got {fn!r}")
        self.fn = fn


class Map(_UserFunction):
    """Apply `fn` to every record: `stream.map(fn)`."""

    def on_batch(self, port, batch):
        self.emit(over_batch(self.name, self.fn, batch, _map))


class Filter(_UserFunction):
    """Keep the records for which `fn` is true: `stream.filter(fn)`."""

    def on_batch(self, port, batch):
        self.emit(over_batch(self.name, self.fn, batch, _filter))


class FlatMap(_UserFunction):
    """Replace every record by the items of the iterable `fn` returns."""

    def on_batch(self, port, batch):
        self.emit(over_batch(self.name, self.fn, batch, _flat_map))


def _key_by(fn, it):
    # A comprehension beats list(zip(map(fn, it), batch)) by ~25% here: the
    # pairs are built in one pass (benches/pipelines.py, word count).
    return [(fn(x), x) for x in it]


def _map_values(fn, it):
    return [(k, fn(v)) for k, v in it]


class KeyBy(_UserFunction):
    """Turn every record `x` into the pair `(fn(x), x)`."""

    def on_batch(self, port, batch):
        self.emit(over_batch(self.name, self.fn, batch, _key_by))


class MapValues(_UserFunction):
    """Turn every pair `(k, v)` into `(k, fn(v))`."""

    def on_batch(self, port, batch):
        self.emit(over_batch(self.name, self.fn, batch, _map_values))


class Inspect(_UserFunction):
    """Call `fn` on every record for its side effect and pass records on."""

    def on_batch(self, port, batch):
        fn = self.fn
        it = iter(batch)
        try:
            for record in it:
                fn(record)
        except KernelError:
            raise
        except Exception as exc:
            raise user_error(self.name, fn, exc, batch, it) from exc
        self.emit(batch)


class Union(Operator):
    """Merge any number of inputs into one stream, batches in arrival order."""

    def on_batch(self, port, batch):
        self.emit(batch)
