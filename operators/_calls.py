"""Running user functions over whole batches, and naming the record that failed.

Hot loops hand the batch to C-level iteration (`map`) or a comprehension over
an explicit iterator. When the user function raises, the iterator has consumed
exactly the records up to and including the failing one, so its remaining
length tells which record it was, without replaying the batch (which would
call side-effecting functions twice).

`map()` has one trap: a user function that raises `StopIteration` ends it
early and silently. `call_each` compares the number of results with the
batch, so such a batch is reported as an error, never truncated.
(Comprehensions do not have the trap: there the exception propagates.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from itertools import islice
from operator import length_hint

from kernel.dataflow._errors import (
    PASSES_THROUGH,
    UNHASHABLE_KEY,
    OperatorError,
    calls_a_steps_function,
    is_not_a_pair,
    is_unhashable,
    not_a_pair,
)
from kernel.dataflow._operator import LARGE_OUTPUT, PIECE, Unfinished, unfinished

from ._accessors import IDENTITY


def failing_index(batch: list, iterator) -> int | None:
    """The index of the record at which `iterator` (over `batch`) stopped
    at a failure, or None."""
    index = len(batch) - length_hint(iterator) - 1
    return index if 0 <= index < len(batch) else None


def failing_record(batch: list, iterator) -> tuple[bool, object]:
    """(found, record) for a batch whose `iterator` stopped at a failure."""
    index = failing_index(batch, iterator)
    return (False, None) if index is None else (True, batch[index])


def user_error(operator: str, fn, exc: BaseException, batch: list, iterator) -> OperatorError:
    found, record = failing_record(batch, iterator)
    return OperatorError.wrap(operator, fn, exc, record=record, has_record=found)


def keyed_error(operator: str, fn, exc: BaseException, record) -> OperatorError:
    """The error of a keyed step (an aggregate, a window, a join) on a
    `(key, value)` record. Such a step hashes the key before it calls
    anything else on the record, so when the key cannot be hashed, that is
    what failed, whichever function was about to run (`+` for sum, the
    user's for reduce). A record that is not a pair at all (a loop's
    feedback on a keyed stream) is said to be one."""
    if is_not_a_pair(record):
        return not_a_pair(operator, exc, record)
    if isinstance(record, tuple) and record and is_unhashable(record[0]):
        return OperatorError.wrap(operator, "hash(key)", exc, record=record, hint=UNHASHABLE_KEY)
    return OperatorError.wrap(operator, fn, exc, record=record)


#: what a StopIteration from a function (or from a record it reads) is
#: reported as where `map()` would have ended the batch silently at it
STOP_ENDS_BATCH = "raised StopIteration, which would silently end the batch"


@calls_a_steps_function()
def call_each(operator: str, fn, batch: list, fast=None) -> list:
    """`[fn(x) for x in batch]` at `map()` speed, failures named. `fast`:
    `_accessors.accessor(fn)`, which does the same in C (the records as
    they are for IDENTITY); errors still name `fn`."""
    if fast is IDENTITY:
        return list(batch)
    it = iter(batch)
    try:
        results = list(map(fn if fast is None else fast, it))
    except PASSES_THROUGH:
        raise
    except BaseException as exc:
        raise user_error(operator, fn, exc, batch, it) from exc
    if len(results) != len(batch):
        stop = RuntimeError(STOP_ENDS_BATCH)
        raise OperatorError.wrap(operator, fn, stop, record=batch[len(results)])
    return results


@calls_a_steps_function()
def over_batch(operator: str, fn, batch: list, build: Callable, fast=None,
               fast_build: Callable | None = None, pairs: bool = False) -> list:
    """`build(fn, iterator)` over `batch`, with failures named. `build` is a
    comprehension that takes the records from the iterator one by one and
    calls `fn` on each right after taking it. With `fast`
    (`_accessors.accessor(fn)`), `fast_build(fast, iterator, batch)`
    instead, which does the same without calling `fn`. `pairs`: the step
    reads its records as `(key, value)` (map_values): one that is no pair
    (a loop's feedback on a keyed stream) is named as that, not as the
    function's failure."""
    it = iter(batch)
    try:
        if fast is not None and fast_build is not None:
            return fast_build(fast, it, batch)
        return build(fn, it)
    except PASSES_THROUGH:
        raise
    except BaseException as exc:
        if pairs:
            found, record = failing_record(batch, it)
            if found and is_not_a_pair(record):
                raise not_a_pair(operator, exc, record) from exc
        raise user_error(operator, fn, exc, batch, it) from exc


def mapped(get, it, batch: list) -> list:
    """`[get(x) for x in it]` at `map()` speed, `it` over `batch`: `get` a
    getter from `_accessors.accessor`, standing in for a comprehension
    that calls the user's function. A `StopIteration` from the getter (a
    record's `__getitem__` or attribute that raises one) ends `map()`
    silently, where the comprehension lets it through: a short list means
    that, and the getter is tried once more on the record at fault (`it`
    has stopped after it: `failing_index`), so that the same StopIteration,
    with its arguments, is what fails, as it would have. (Only there is a
    record read twice, on the error path of a record that raises
    StopIteration; one that raised it only the first time fails with a
    StopIteration of no arguments.)"""
    out = list(map(get, it))
    if len(out) != len(batch):
        get(batch[len(out)])
        raise StopIteration  # it raised one the first time, not again
    return out


#: records per batch that operators emit their results in (aggregates at end
#: of input, windows when they close)
EMIT_BATCH = 1024


def emit_in_batches(emit: Callable[[list], None], records) -> None:
    """Hand `records` (any iterable) on in batches of EMIT_BATCH."""
    it = iter(records)
    while batch := list(islice(it, EMIT_BATCH)):
        emit(batch)


def emit_in_pieces(emit: Callable[[list], None], records, count: int) -> Unfinished | None:
    """`emit_in_batches` for the `count` `records` a handler hands on at a
    watermark or at the end of input: beyond LARGE_OUTPUT, the first piece
    now and the `Unfinished` rest (read from `records` as it goes on)."""
    if count <= LARGE_OUTPUT:
        emit_in_batches(emit, records)
        return None
    it = iter(records)
    emit(list(islice(it, PIECE)))
    return unfinished(iter(lambda: list(islice(it, PIECE)), []), emit)


def start_values(init) -> Callable[[], object]:
    """A fold's start value as a factory: `init` itself where it is one
    (`list`), else a function giving `init`, or a copy of it where it could
    change. A `fold([], fn)` whose `fn` appends to its accumulator shared
    one list among every key and window: each came out holding every value
    of them all. Checked once here: a value that deep-copies as itself (a
    scalar, a tuple of scalars, the usual start values; an Enum member) is
    handed out as it is."""
    if callable(init):
        return init
    if type(init) is object:
        # (a bare `object()` is a sentinel, compared with `is`: a copy of
        # it broke `fold(START, fn)` whose fn tests `acc is START`)
        return lambda: init
    try:
        if copy.deepcopy(init) is init:  # nothing in it can change
            return lambda: init
    except Exception:
        # one that cannot be copied (it holds a lock, a socket) is handed out
        # as it is, as before copies were made: failing at each key's first
        # record broke folds whose fn never changes its accumulator
        return lambda: init
    return lambda: copy.deepcopy(init)
