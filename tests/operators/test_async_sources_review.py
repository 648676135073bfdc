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
