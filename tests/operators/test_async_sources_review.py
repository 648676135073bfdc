"""Review of from_async_iterable, from_partitions and mid-level sources:
failing tests for what was found wrong (each says what it expects)."""

from __future__ import annotations

import asyncio

import pytest

from kernel import Dataflow, OperatorError, Source, run_async

# -- an async generator that raises CancelledError itself --------------------------


async def test_an_async_generator_raising_cancelled_error_fails_the_run_rather_than_hanging():
    """The generator awaits a future that something else cancels (a client
    library's request, a lock's waiter...): CancelledError comes out of its
    `__anext__` while the run itself was never cancelled. The reader task
    lets it pass (`PASSES_THROUGH`) and ends as cancelled, nothing wakes the
    source again, and the run waits for ever (one kernel or several). It
    should fail naming the step and the error, as any other exception out
    of the async iterator does."""

    async def events():
        for i in range(10):
            yield i
            if i == 4:
                loop = asyncio.get_running_loop()
                cancelled = loop.create_future()
                loop.call_soon(cancelled.cancel)
                await cancelled  # raises CancelledError in the generator

    flow = Dataflow()
    flow.from_async_iterable(events).collect()
    try:
        await asyncio.wait_for(run_async(flow), timeout=30.0)
    except OperatorError as exc:
        assert exc.operator.startswith("from_async_iterable")
        assert "CancelledError" in str(exc)
    except TimeoutError:
        pytest.fail("the run hung after the async generator raised CancelledError")
    else:
        pytest.fail("the run ended as if the async generator had been read to its end")


# -- a mid-level source whose poll returns a number ------------------------------


class CountingDown(Source):
    """Emits three records, then returns how many are still to come: 0,
    meant as "no more" (as `len(self.pending)` would say it)."""

    def open(self, context):
        self.pending = [1, 2, 3]

    def poll(self):
        batch, self.pending = self.pending, []
        self.emit(batch)
        return len(self.pending)  # 0: neither True, False nor None


async def test_a_poll_that_returns_zero_is_refused_rather_than_sleeping_for_ever():
    """`poll` must return True, False or None, and the kernel refuses a list
    or a str returned there (`poll returned '': it must return True, False
    or None`) so that the run does not go on wrongly. An int 0 passes the
    check (not a Collection) and, being neither True nor `is False`, is
    taken as None: the source sleeps until a wake() that nothing will send,
    and the run never ends. It should be refused like the others."""
    flow = Dataflow()
    flow.source(CountingDown, name="counting down").collect()
    try:
        await asyncio.wait_for(run_async(flow), timeout=30.0)
    except OperatorError as exc:
        assert exc.operator.startswith("counting down")
        assert "True, False or None" in str(exc)
    except TimeoutError:
        pytest.fail("poll returned 0 and the run hung, the source asleep for ever")
    else:
        pytest.fail("poll returned 0 and the run ended without a word")


# -- a factory that raises -----------------------------------------------------------


def test_a_factory_that_raises_is_named_as_the_function_that_failed():
    """A user function that raises is named in the OperatorError (README,
    "When a function raises"); from_partitions names `make` when it raises.
    from_async_iterable's zero-argument factory, called in the source's
    open(), is reported as function
    'kernel.operators._sources.AsyncIterableSource.open' instead: a library
    method, not the user's function that failed."""

    def connect_to_feed():
        raise ConnectionError("feed unreachable")

    from kernel import run

    flow = Dataflow()
    flow.from_async_iterable(connect_to_feed).collect()
    with pytest.raises(OperatorError, match="feed unreachable") as info:
        run(flow)
    assert info.value.operator.startswith("from_async_iterable")
    assert "connect_to_feed" in info.value.function, info.value.function


# -- closing the async generator when the run fails or is cancelled ----------------


def endless_with_cleanup(closed: list):
    """An async generator that never awaits (a fast producer: the reader
    fills its buffer and waits for room, the generator suspended at a
    `yield`) and notes when its `finally` runs."""

    async def events():
        try:
            for i in range(10**6):
                yield i
        finally:
            closed.append("finally")

    return events


async def settle():
    for _ in range(20):  # what a close scheduled on the loop would need
        await asyncio.sleep(0)


@pytest.mark.parametrize("as_object", [False, True], ids=["function", "object"])
async def test_a_run_that_fails_closes_the_async_generator(as_object):
    """A step after the source fails on the first record. The reader task is
    cancelled where it waits for room in its buffer, outside the generator,
    and `async for` does not close what it iterates: the generator stays
    suspended, its `finally` (closing a connection, a cursor) unrun when
    run_async raises. Given as an object the caller still holds, it runs
    only at the loop's shutdown (asyncio.run's shutdown_asyncgens), if ever;
    given as a function, when the garbage collector happens to get to it."""
    closed: list = []
    events = endless_with_cleanup(closed)
    source = events() if as_object else events

    def fail(record):
        raise RuntimeError("downstream step failed")

    flow = Dataflow()
    flow.from_async_iterable(source, batch_size=2).map(fail).collect()
    with pytest.raises(OperatorError, match="downstream step failed"):
        await run_async(flow)
    await settle()
    assert closed == ["finally"], "the async generator was left suspended, its finally unrun"


async def test_a_cancelled_run_closes_the_async_generator():
    """The same when the caller cancels run_async while the reader waits for
    room in its buffer."""
    closed: list = []
    events = endless_with_cleanup(closed)
    seen = asyncio.Event()

    def note(record):
        seen.set()
        return record

    flow = Dataflow()
    flow.from_async_iterable(events(), batch_size=2).map(note).collect()
    task = asyncio.ensure_future(run_async(flow))
    await asyncio.wait_for(seen.wait(), timeout=30.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert closed == ["finally"], "the async generator was left suspended, its finally unrun"
