"""Record-at-a-time transforms, each over a whole batch in C-level iteration.

`map(fn, it)` and friends keep the per-record work to the user's function
call itself; a Python-level loop with `append` costs noticeably more per
record (benches/pipelines.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from itertools import chain, compress, islice, repeat

from kernel.dataflow._errors import PASSES_THROUGH, OperatorError, calls_a_steps_function
from kernel.dataflow._operator import Operator, PieceSize, TimedBatch, record_bytes, unfinished

from ._accessors import IDENTITY, accessor
from ._calls import EMIT_BATCH, STOP_ENDS_BATCH, call_each, failing_index, mapped, over_batch, user_error
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
        if sum(stage.kind == "flat_map" for stage in stages) > 1:
            # A second flat_map starts a chain of its own. Where both hand
            # their outputs on in pieces, the steps apart interleave them
            # (the first's next piece between the second's), and a fused
            # chain would read them depth first: the functions would run in
            # another order, and of two failures the other one would show.
            return None
        upstream._fusion = (stages, tail, then)
        chain = FusedChain(stages)
        if chain.in_pieces:
            flat_map = next(stage.pieces.__self__ for stage in stages if stage.kind == "flat_map")
            fused_chain = _in_pieces(chain.run_in_pieces, tail, then, flat_map.fit)
        else:
            fused_chain = _whole(chain.run, tail, then)
        fused_chain.one_to_one = one_to_one(stages)
        fused_chain.changes_counts_at = changes_counts_at(stages)
        fused_chain.handed_on = 0
        return fused_chain


def _whole(run, tail, then):
    """The handler of a fused chain with no flat_map: `run`'s output goes on
    as one batch, through the chain's last step's emit (`tail`) or the
    handler of the operator that took that step (`then`)."""
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
    return fused_chain


def _in_pieces(run_in_pieces, tail, then, fit):
    """The handler of a fused chain with a flat_map, whose output may come
    in pieces (`FlatMap.pieces`): the first goes on now, the rest in later
    ticks (`Unfinished`), sized by what they cost (the flat_map's `fit`)."""
    if then is None:
        def fused_chain(port, batch):
            out, rest = run_in_pieces(batch)
            fused_chain.handed_on = len(out)
            emit = tail.emit
            emit(out)
            return None if rest is None else unfinished(rest, emit, fit)
    else:
        def fused_chain(port, batch):
            out, rest = run_in_pieces(batch)
            fused_chain.handed_on = len(out)
            then(port, out)
            return None if rest is None else unfinished(rest, partial(then, port), fit)
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


# A flat_map whose function makes many records from one (a range of
# millions) hands them on in pieces, one a tick (`FlatMap.pieces`), so that
# the kernel still hands the loop back within its budget.
PIECE = EMIT_BATCH  # records in a piece
LARGE = 64 * EMIT_BATCH  # a batch's output of more records than this goes on in pieces
# results read whole between two looks at the output's size: a batch of
# the sources' default size in one loop, as before
CHUNK = 1024
WIDE = 256  # results of more records than this on average are read PIECE records at a time
# Sized by bytes too, by a sample of the records (`record_bytes`): a piece
# holds at most PIECE_BYTES of them, and an output of more than LARGE_BYTES
# goes on in pieces. By records alone, a batch of 534 records from another
# kernel, 20 records of 10 KB made of each, was 107 MB made at once.
PIECE_BYTES = 1 << 20
LARGE_BYTES = 4 << 20
SAMPLE_PIECE = 16  # records read before the first piece's size is known (the step's first batch)


class FlatMap(_UserFunction):
    """Replace every record by the items of the iterable `fn` returns."""

    kind = "flat_map"
    # Whether the next batch's results are read PIECE records at a time
    # (an `islice` each, ~0.3 us a result) rather than whole by `extend`:
    # so is the first batch (nothing is known of fn yet: one result may be a
    # range of millions), and after that a batch whose results were wide.
    piecewise = True
    # records in a piece, and the most handed on whole, by the size of the
    # records last sampled (`_sized`); None: none sampled yet
    piece: int | None = None
    large = LARGE
    # Records in a piece by what a piece costs: the steps after a flat_map
    # (chained, or fused into its pieces) may cost far more a record than
    # it does (a map of 30 us a record after it: a piece of 1,024 records
    # held the loop 30 ms, 30 times the budget). `fit` learns it from the
    # pieces handed on in later ticks (`Unfinished.step`), and a piece,
    # the first of a batch's included, holds no more records than that.
    sizing: PieceSize | None = None  # (made at the first `fit`)
    made_piece = made_before = 0  # records in the piece made last, and in the one before it
    making_cost = 0.0  # seconds a record of the piece made last took to make (the steps fused after)

    @property
    def cost_piece(self) -> int:
        sizing = self.sizing
        return PIECE if sizing is None else sizing.size

    def on_batch(self, port, batch):
        out, rest = self.pieces(batch)
        emit = self.emit
        emit(out)
        return None if rest is None else unfinished(rest, emit, self.fit)

    def fit(self, handing: float, making: float, seconds: float, made: bool) -> None:
        """A piece took `handing` seconds to go on (the steps chained after
        it) and the next one `making` to make (the steps fused after it),
        and a piece is to take at most `seconds`: what a piece of as many
        records as the one handed on cost (`PieceSize.fit`)."""
        handed = self.made_before if made else self.made_piece
        if made:  # (the last piece was made at the cost of those before it)
            self.making_cost = making / self.made_piece
        if handed < 1:
            return
        cost = handing / handed + self.making_cost  # seconds a record
        if self.sizing is None:
            self.sizing = PieceSize()
        self.sizing.fit(handed, cost * handed, seconds)

    def transform(self, batch):
        """The whole output of `batch` at once (the pieces joined)."""
        out, rest = self.pieces(batch)
        if rest is None:
            return out
        pieces = [out, *rest]
        records = list(chain.from_iterable(pieces))
        if batch.__class__ is TimedBatch:
            return TimedBatch(records, list(chain.from_iterable(piece.timestamps for piece in pieces)))
        return records

    def _stage(self) -> Stage:
        return Stage(self.kind, self.fn, self.name, self.transform, self.pieces)

    def pieces(self, batch) -> tuple[list, Iterator[list] | None]:
        """This step's output for `batch`: (all of it, None), or where it is
        more than LARGE records or the results are wide, (its first piece of
        PIECE records, an iterator of the next pieces). fn is called on the
        whole batch first, as before; only the reading of its results is
        spread over the pieces. But where the records it makes are large
        (its pieces hold fewer than PIECE: `_sized`), fn is called on each
        record as the pieces are read (`_Results`): a function returning a
        list of 20 records of 10 KB had all 534 of a batch's lists made
        before the first piece went on (107 MB)."""
        large = (self.piece or PIECE) < PIECE
        parts = _Results(self, batch) if large else call_each(self.name, self.fn, batch, self.fast)
        timed = batch.__class__ is TimedBatch
        if self.piecewise or large:
            rest = self._piecewise(batch, parts, 0, [], [] if timed else None)
            first = next(rest, None)  # None: no records (a TimedBatch stays one: a window reads its times)
            return (_piece([], [] if timed else None) if first is None else first), rest
        out: list = []
        sizes = [] if timed else None  # len(out) after each result, for the timestamps
        read = self._read_whole(batch, parts, out, sizes)
        if out:
            self._sized(out)  # (a few records' sizes a batch)
        if len(out) > self.large:
            stamps = repeated_times(out, batch, _counts(sizes)).timestamps if timed else None
            rest = self._piecewise(batch, parts, read, out, stamps)
            return next(rest), rest
        self.piecewise = len(out) > WIDE * len(parts) or (self.piece or PIECE) < PIECE
        return (repeated_times(out, batch, _counts(sizes)) if timed else out), None

    def _sized(self, records: list) -> None:
        """`piece` and `large` by the size of a few of `records`."""
        size = record_bytes(records)
        self.piece = max(1, min(PIECE, PIECE_BYTES // size))
        self.large = max(1, min(LARGE, LARGE_BYTES // size))

    def _read_whole(self, batch: list, parts: list, out: list, sizes: list | None) -> int:
        """Extends `out` by the results, each whole (C-level `extend`), CHUNK
        of them at a time, until all are read or `out` holds more than
        `large` records; returns how many were read. `sizes`, if given, gets
        len(out) after each. A plain loop rather than itertools.chain: when
        a result raises while being read, `index` names its record; and no
        work per record is added, only a look at len(out) per CHUNK."""
        extend = out.extend
        mark = None if sizes is None else sizes.append
        count = len(parts)
        read = index = 0
        try:
            while read < count:
                chunk = parts if count <= CHUNK else parts[read:read + CHUNK]
                if mark is None:
                    for index, part in enumerate(chunk, read):  # noqa: B007 - read in the except
                        extend(part)
                else:
                    for index, part in enumerate(chunk, read):  # noqa: B007 - read in the except
                        extend(part)
                        mark(len(out))
                read += len(chunk)
                if len(out) > self.large:
                    break
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            raise OperatorError.wrap(self.name, self.fn, exc, record=batch[index]) from exc
        return read

    def _piecewise(self, batch: list, parts: list, start: int, out: list, stamps: list | None):
        """The output in pieces of `piece` records (PIECE, fewer where the
        records are large): first `out`, what the results before `start`
        made (`stamps` their times, None for a plain batch), then the
        results from `start` on, each read a piece at a time, so that no
        piece takes long or holds much however many records one result
        makes (a generator: read as the pieces are handed on). The step's
        first SAMPLE_PIECE records are sized before its first piece is
        filled."""
        piece = min(self.piece or SAMPLE_PIECE, self.cost_piece)
        made = len(out)
        at = 0
        while made - at >= piece:
            self.made_before, self.made_piece = self.made_piece, piece
            yield _piece(out[at:at + piece], None if stamps is None else stamps[at:at + piece])
            at += piece
            piece = min(self.piece or SAMPLE_PIECE, self.cost_piece)  # (`fit` may have changed it)
        out = out[at:]
        stamps = None if stamps is None else stamps[at:]
        times = None if stamps is None else batch.timestamps
        for index in range(start, len(parts)):
            result = parts[index]
            kind = result.__class__
            if (kind is list or kind is tuple) and len(out) + len(result) < piece:
                out.extend(result)  # made already, and fits: as _read_whole reads it
                made += len(result)
                if stamps is not None:
                    stamps.extend(repeat(times[index], len(result)))
                continue
            # The reading alone is in the try (free in 3.11 unless it raises):
            # the yield must stay out of it, where closing this generator
            # raises GeneratorExit, which is no error of fn's.
            try:
                result = iter(result)
            except PASSES_THROUGH:
                raise
            except BaseException as exc:
                raise OperatorError.wrap(self.name, self.fn, exc, record=batch[index]) from exc
            while True:
                room = piece - len(out)
                try:
                    out.extend(islice(result, room))
                except PASSES_THROUGH:
                    raise
                except BaseException as exc:
                    raise OperatorError.wrap(self.name, self.fn, exc, record=batch[index]) from exc
                got = len(out) + room - piece
                made += got
                if stamps is not None:
                    stamps.extend(repeat(times[index], got))
                if got < room:  # this result is read
                    break
                self._sized(out)
                piece = min(self.piece, self.cost_piece)
                if len(out) < piece:  # the step's first SAMPLE_PIECE records, sized: the piece holds more
                    continue
                self.made_before, self.made_piece = self.made_piece, len(out)
                yield _piece(out, stamps)
                out = []
                stamps = None if stamps is None else []
                piece = min(self.piece, self.cost_piece)  # (`fit` may have changed it)
        if out:
            self._sized(out)
        self.piecewise = made > WIDE * len(parts) or (self.piece or PIECE) < PIECE
        if out:
            self.made_before, self.made_piece = self.made_piece, len(out)
            yield _piece(out, stamps)


class _Results:
    """A flat_map's results for `batch`, each made as it is read (fn called
    on its record then): `FlatMap.pieces` where the records are large."""

    __slots__ = ("batch", "call", "fn", "name")

    def __init__(self, step: FlatMap, batch: list) -> None:
        self.batch = batch
        self.fn = step.fn
        self.name = step.name
        fast = step.fast
        self.call = _same if fast is IDENTITY else (step.fn if fast is None else fast)

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, index: int):
        try:
            return self.call(self.batch[index])
        except PASSES_THROUGH:
            raise
        except BaseException as exc:
            problem = RuntimeError(STOP_ENDS_BATCH) if isinstance(exc, StopIteration) else exc
            raise OperatorError.wrap(self.name, self.fn, problem, record=self.batch[index]) from exc


def _same(record):
    return record


def _counts(sizes: list | None) -> list:
    """Records per result, from len(out) after each."""
    if sizes is None:
        return []
    return [after - before for before, after in zip([0, *sizes], sizes)]


def _piece(out: list, stamps: list | None) -> list:
    return out if stamps is None else TimedBatch(out, stamps)


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


def _values_of_pairs_fast(get, it, batch, keys):
    # (`keys(k) is None`: always true; it keeps the key as the record is unpacked)
    if get is IDENTITY:
        return [v for k, v in it if keys(k) is None]
    return [get(v) for k, v in it if keys(k) is None]


class KeyBy(_UserFunction):
    """Turn every record `x` into the pair `(fn(x), x)`."""

    kind = "key_by"

    def transform(self, batch):
        return same_times(over_batch(self.name, self.fn, batch, _key_by, self.fast, _key_by_fast), batch)


class MapValues(_UserFunction):
    """Turn every pair `(k, v)` into `(k, fn(v))`."""

    kind = "map_values"

    def transform(self, batch):
        return same_times(over_batch(self.name, self.fn, batch, _map_values, self.fast, _map_values_fast,
                                     pairs=True), batch)


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
        # Each record unpacked once, as map_values does apart: one that
        # unpacks as two items need not be a tuple (a loop's feedback may
        # make a dict or a one-shot iterable), and its [0] may be
        # something else or nothing. Its key is kept as it is unpacked.
        keys: list = []
        values = over_batch(value_step, value_of, pairs, partial(_values_of_pairs, keys=keys.append),
                            value_fast, partial(_values_of_pairs_fast, keys=keys.append), pairs=True)
        add(port, keys, values, pairs)

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


def _values_of_pairs(fn, it, keys):
    # unpacked as map_values does apart, so a record that is no pair fails
    # alike; `keys(k)`, always None, keeps its key
    return [fn(v) for k, v in it if keys(k) is None]


@calls_a_steps_function(step="step")
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
