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
        await asyncio.wait_for(run_async(flow), timeout=3.0)
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
        await asyncio.wait_for(run_async(flow), timeout=3.0)
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
