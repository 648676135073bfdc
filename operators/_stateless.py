"""Record-at-a-time transforms, each over a whole batch in C-level iteration.

`map(fn, it)` and friends keep the per-record work to the user's function
call itself; a Python-level loop with `append` costs noticeably more per
record (benches/pipelines.py).
"""

from __future__ import annotations

from itertools import compress

from kernel.dataflow._errors import PASSES_THROUGH, OperatorError
from kernel.dataflow._operator import Operator, TimedBatch

from ._accessors import IDENTITY, accessor
from ._calls import STOP_ENDS_BATCH, call_each, failing_index, mapped, over_batch, user_error
from ._event_time import repeated_times, same_times
from ._fusion import FusedChain, Stage, changes_counts_at, one_to_one


class _UserFunction(Operator):
    """An operator built around one user function. Chained after another
    (on one kernel), it fuses with it (`_fusion.py`): the two, and any
    fused after them, run as one generated comprehension per batch."""

    kind = ""  # the step kind in _fusion

    def __init__(self, fn) -> None:
        if not callable(fn):
            raise TypeError(f"{type(self).__name__.lower()} needs a callable, got {fn!r}")
        self.fn = fn
        # what fn does to a record, in C, where it only reads it (_accessors)
        self.fast = accessor(fn)

    def transform(self, batch: list) -> list:
        """This step's output for `batch` (a TimedBatch keeps its times)."""
        raise NotImplementedError

    def on_batch(self, port, batch):
        self.emit(self.transform(batch))

    def _stage(self) -> Stage:
        return Stage(self.kind, self.fn, self.name, self.transform)

    def fuse_upstream(self, upstream):
        # The runtime offers fusions from the end of a chain back, so this
        # step may have taken the steps after it already (`_fusion`), or
        # have been taken by an operator after it (an aggregate after
        # key_by: its handler now stands in `on_batch`).
        if not isinstance(upstream, _UserFunction):
            return None
        fusion = self.__dict__.get("_fusion")
        if fusion is not None:
            stages, tail, then = fusion
        elif "on_batch" in self.__dict__:
            # Taken by the operator after it, whose handler may take this
            # step's upstream as well (a window after key_by + map_values)
            take = getattr(self.on_batch, "take_upstream", None)
            handler = take(upstream) if take is not None else None
            if handler is not None:
                return handler
            stages, tail, then = [], None, self.on_batch
        else:
            stages, tail, then = [self._stage()], self, None
        stages = [upstream._stage(), *stages]
        upstream._fusion = (stages, tail, then)
        run = FusedChain(stages).run
        if then is None:
            def fused_chain(port, batch):
                out = run(batch)
                fused_chain.handed_on = len(out)  # (metrics: the records after a filtering step)
                tail.emit(out)  # the chain's last step emits (looked up now: installed later)
        else:
            def fused_chain(port, batch):
                out = run(batch)
                fused_chain.handed_on = len(out)
                then(port, out)
        fused_chain.one_to_one = one_to_one(stages)
        fused_chain.changes_counts_at = changes_counts_at(stages)
        fused_chain.handed_on = 0
        return fused_chain


class Map(_UserFunction):
    """Apply `fn` to every record: `stream.map(fn)`."""

    kind = "map"

    def transform(self, batch):
        return same_times(call_each(self.name, self.fn, batch, self.fast), batch)


class Filter(_UserFunction):
    """Keep the records for which `fn` is true: `stream.filter(fn)`."""

    kind = "filter"

    def transform(self, batch):
        results = call_each(self.name, self.fn, batch, self.fast)
        # Each result's truth is tested once, in order, and a failing test
        # names its record (`it`'s position): a result without a truth
        # value (a numpy array) fails, and one whose test raises
        # StopIteration fails too rather than ending the batch (`compress`
        # over the results ended silently there, and on a TimedBatch
        # tested each result twice, once for the records, once for times).
        it = iter(results)
        try:
            if batch.__class__ is not TimedBatch:
                return [record for record, result in zip(batch, it) if result]
            keep = list(map(bool, it))
            if len(keep) != len(results):
                raise StopIteration
            return TimedBatch(compress(batch, keep), list(compress(batch.timestamps, keep)))
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            problem = RuntimeError(STOP_ENDS_BATCH) if isinstance(exc, StopIteration) else exc
            raise user_error(self.name, self.fn, problem, batch, it) from exc


class FlatMap(_UserFunction):
    """Replace every record by the items of the iterable `fn` returns."""

    kind = "flat_map"

    def transform(self, batch):
        parts = call_each(self.name, self.fn, batch, self.fast)
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
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise OperatorError.wrap(self.name, self.fn, exc, record=batch[index]) from exc
        if timed:
            counts = [after - before for before, after in zip([0, *sizes], sizes)]
            out = repeated_times(out, batch, counts)
        return out


def _key_by(fn, it):
    # A comprehension beats list(zip(map(fn, it), batch)) by ~25% here: the
    # pairs are built in one pass (benches/pipelines.py, word count).
    return [(fn(x), x) for x in it]


def _map_values(fn, it):
    return [(k, fn(v)) for k, v in it]


# The same without calling the user's function: `get` is its accessor
# (IDENTITY or a C getter), `it` an iterator over `batch`.


def _key_by_fast(get, it, batch):
    if get is IDENTITY:
        return [(x, x) for x in it]
    return list(zip(mapped(get, it, batch), batch))


def _map_values_fast(get, it, batch):
    if get is IDENTITY:
        return [(k, v) for k, v in it]  # unpacked all the same: a record that is no pair fails
    return [(k, get(v)) for k, v in it]


def _keys_fast(get, it, batch):
    return list(it) if get is IDENTITY else mapped(get, it, batch)


def _values_of_pairs_fast(get, it, batch):
    if get is IDENTITY:
        return [v for _, v in it]
    return [get(v) for _, v in it]


class KeyBy(_UserFunction):
    """Turn every record `x` into the pair `(fn(x), x)`."""

    kind = "key_by"

    def transform(self, batch):
        return same_times(over_batch(self.name, self.fn, batch, _key_by, self.fast, _key_by_fast), batch)


class MapValues(_UserFunction):
    """Turn every pair `(k, v)` into `(k, fn(v))`."""

    kind = "map_values"

    def transform(self, batch):
        return same_times(over_batch(self.name, self.fn, batch, _map_values, self.fast, _map_values_fast),
                          batch)


def columns_after(upstream, add):
    """Fusion for a keyed step that takes its records as columns (an
    aggregate, a window's aggregate): the handler that stands in for the
    `map_values` `upstream`, calling `add(port, keys, values, batch)` with
    the keys and map_values' values as two lists (`batch`: what the handler
    was given, for its timestamps), no `(key, value)` pair built; None when
    `upstream` is no map_values. Offered the `key_by` before that too
    (`_UserFunction.fuse_upstream` asks `take_upstream`), it computes the
    keys itself. The errors are the steps' apart: key_by's over the whole
    batch first, then map_values', each naming its step and the record it
    was given."""
    if type(upstream) is not MapValues:
        return None
    value_of, value_step, value_fast = upstream.fn, upstream.name, upstream.fast

    def map_values_then(port, pairs):
        values = over_batch(value_step, value_of, pairs, _values_of_pairs, value_fast, _values_of_pairs_fast)
        # unpacked, as the values were: a record that unpacks as two items
        # need not be a tuple (a loop's feedback may make a dict or any
        # iterable), and its [0] may be something else or nothing
        add(port, [key for key, _ in pairs], values, pairs)

    def take_upstream(before):
        if type(before) is not KeyBy:
            return None
        key_of, key_step, key_fast = before.fn, before.name, before.fast

        def key_by_then_map_values_then(port, batch):
            keys = over_batch(key_step, key_of, batch, _keys, key_fast, _keys_fast)
            add(port, keys, _values_of_records(value_step, value_of, batch, keys, value_fast), batch)

        return key_by_then_map_values_then

    map_values_then.take_upstream = take_upstream
    return map_values_then


def _keys(fn, it):
    return [fn(x) for x in it]


def _values_of_pairs(fn, it):
    # unpacked as map_values does apart, so a record that is no pair fails alike
    return [fn(v) for _, v in it]


def _values_of_records(step: str, fn, batch: list, keys: list, fast=None) -> list:
    """map_values' function over the values of key_by's pairs `(keys[i],
    batch[i])`, none of them built; a failure names the pair. `fast`: the
    function's accessor (`_accessors`)."""
    if fast is IDENTITY:
        return list(batch)
    it = iter(batch)
    try:
        if fast is not None:
            return mapped(fast, it, batch)
        return [fn(x) for x in it]
    except PASSES_THROUGH:
        raise
    except BaseException as exc:
        index = failing_index(batch, it)
        found = index is not None
        raise OperatorError.wrap(step, fn, exc, record=(keys[index], batch[index]) if found else None,
                                 has_record=found) from exc


class Inspect(_UserFunction):
    """Call `fn` on every record for its side effect and pass records on."""

    kind = "inspect"

    def transform(self, batch):
        fn = self.fn
        it = iter(batch)
        try:
            for record in it:
                fn(record)
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise user_error(self.name, fn, exc, batch, it) from exc
        return batch


class Union(Operator):
    """Merge any number of inputs into one stream, batches in arrival order."""

    def on_batch(self, port, batch):
        self.emit(batch)
