"""Running user functions over whole batches, and naming the record that failed.

Hot loops hand the batch to C-level iteration (`map`, `filter`,
`itertools.chain`, `zip`) over an explicit iterator. When the user function
raises, the iterator has consumed exactly the records up to and including the
failing one, so its remaining length tells which record it was, without
replaying the batch (which would call side-effecting functions twice).

The same bookkeeping catches a quiet data loss: a user function that raises
`StopIteration` ends `map()` early instead of propagating. A batch whose
iterator was not drained is reported as an error, never truncated.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import length_hint

from kernel._errors import KernelError, OperatorError


def failing_record(batch: list, iterator) -> tuple[bool, object]:
    """(found, record) for a batch whose `iterator` stopped at a failure."""
    index = len(batch) - length_hint(iterator) - 1
    if 0 <= index < len(batch):
        return True, batch[index]
    return False, None


def user_error(operator: str, fn, exc: BaseException, batch: list, iterator) -> OperatorError:
    found, record = failing_record(batch, iterator)
    return OperatorError.wrap(operator, fn, exc, record=record, has_record=found)


def over_batch(operator: str, fn, batch: list, build: Callable) -> list:
    """`build(fn, iterator)` over `batch`, with failures named.

    `build` must consume the iterator record by record, calling `fn` on each
    record right after taking it (`map`, `filter`, a comprehension over it).
    """
    it = iter(batch)
    try:
        out = build(fn, it)
    except KernelError:
        raise
    except Exception as exc:
        raise user_error(operator, fn, exc, batch, it) from exc
    if length_hint(it):
        stop = RuntimeError("raised StopIteration, which would silently end the batch")
        raise user_error(operator, fn, stop, batch, it)
    return out
