"""Record-at-a-time transforms, each over a whole batch in C-level iteration.

`map(fn, it)` and friends keep the per-record work to the user's function
call itself; a Python-level loop with `append` costs noticeably more per
record (benches/pipelines.py).
"""

from __future__ import annotations

from itertools import compress

from kernel.dataflow._errors import KernelError, OperatorError
from kernel.dataflow._operator import Operator, TimedBatch

from ._calls import call_each, over_batch, user_error
from ._event_time import repeated_times, same_times


class _UserFunction(Operator):
    """An operator built around one user function."""

    def __init__(self, fn) -> None:
        if not callable(fn):
            raise TypeError(f"{type(self).__name__.lower()} needs a callable, got {fn!r}")
        self.fn = fn


class Map(_UserFunction):
    """Apply `fn` to every record: `stream.map(fn)`."""

    def on_batch(self, port, batch):
        self.emit(same_times(call_each(self.name, self.fn, batch), batch))


class Filter(_UserFunction):
    """Keep the records for which `fn` is true: `stream.filter(fn)`."""

    def on_batch(self, port, batch):
        keep = call_each(self.name, self.fn, batch)
        if batch.__class__ is TimedBatch:
            self.emit(TimedBatch(compress(batch, keep), list(compress(batch.timestamps, keep))))
        else:
            self.emit(list(compress(batch, keep)))


class FlatMap(_UserFunction):
    """Replace every record by the items of the iterable `fn` returns."""

    def on_batch(self, port, batch):
        parts = call_each(self.name, self.fn, batch)
        out: list = []
        extend = out.extend
        timed = batch.__class__ is TimedBatch
        sizes: list = []  # len(out) after each part, for the timestamps
        mark = sizes.append if timed else None
        # A plain loop rather than itertools.chain: when an iterable returned
        # by fn raises while being read, `index` names its record.
        index = 0
        try:
            if mark is None:
                for index, part in enumerate(parts):  # noqa: B007 - read in the except
                    extend(part)
            else:
                for index, part in enumerate(parts):  # noqa: B007 - read in the except
                    extend(part)
                    mark(len(out))
        except KernelError:
            raise
        except Exception as exc:
            raise OperatorError.wrap(self.name, self.fn, exc, record=batch[index]) from exc
        if timed:
            counts = [after - before for before, after in zip([0, *sizes], sizes)]
            out = repeated_times(out, batch, counts)
        self.emit(out)


def _key_by(fn, it):
    # A comprehension beats list(zip(map(fn, it), batch)) by ~25% here: the
    # pairs are built in one pass (benches/pipelines.py, word count).
    return [(fn(x), x) for x in it]


def _map_values(fn, it):
    return [(k, fn(v)) for k, v in it]


class KeyBy(_UserFunction):
    """Turn every record `x` into the pair `(fn(x), x)`."""

    def on_batch(self, port, batch):
        self.emit(same_times(over_batch(self.name, self.fn, batch, _key_by), batch))


class MapValues(_UserFunction):
    """Turn every pair `(k, v)` into `(k, fn(v))`."""

    def on_batch(self, port, batch):
        self.emit(same_times(over_batch(self.name, self.fn, batch, _map_values), batch))


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
