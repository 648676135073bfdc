"""Session 36: a low-level Kernel joined again, or spawned on after it failed.

`join()` runs "until every activation and task of this kernel is done": a
second `join()`, after a task was spawned on the kernel whose first join
had returned, returned at once (its idle future was the first join's,
done), the task still pending, its work done later, behind the caller's
back. And a task spawned after the kernel had failed ran, where a failure
stops everything of the kernel."""

import asyncio
import gc
import warnings

import pytest

from kernel.lowlevel import Kernel, cooperate


async def _count(n: int, out: list) -> None:
    for i in range(n):
        out.append(i)
        await cooperate()


async def test_a_second_join_waits_for_what_was_spawned_since():
    kernel = Kernel()
    out: list = []
    kernel.spawn(_count(5, out))
    await kernel.join()
    assert len(out) == 5
    task = kernel.spawn(_count(300, out))
    await kernel.join()
    assert task.done() and len(out) == 305


async def test_a_second_join_of_an_idle_kernel_returns():
    kernel = Kernel()
    await kernel.join()
    await asyncio.wait_for(kernel.join(), 5)


async def test_a_failure_of_a_task_spawned_after_a_join_is_the_next_joins():
    kernel = Kernel()
    await kernel.join()

    async def boom():
        await cooperate()
        raise ValueError("late boom")

    kernel.spawn(boom(), name="late")
    with pytest.raises(Exception, match="late boom"):
        await kernel.join()


async def test_spawn_on_a_failed_kernel_is_refused_and_runs_nothing():
    kernel = Kernel()

    async def boom():
        raise ValueError("boom")

    kernel.spawn(boom())
    with pytest.raises(Exception, match="boom"):
        await kernel.join()
    out: list = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no "coroutine ... was never awaited")
        with pytest.raises(RuntimeError, match="failed"):
            kernel.spawn(_count(3, out))
        gc.collect()
    await asyncio.sleep(0.05)
    assert out == []


@pytest.mark.parametrize("bad", [_count, 5, None])
async def test_spawn_of_no_coroutine_is_refused_at_the_call(bad):
    """spawn(fn) (not fn()) was taken, and failed at join() as a bare "a
    coroutine was expected", the tasks spawned after it never started."""
    kernel = Kernel()
    out: list = []
    kernel.spawn(_count(2, out))
    with pytest.raises(TypeError, match="spawn needs a coroutine"):
        kernel.spawn(bad)
    kernel.spawn(_count(3, out))
    await kernel.join()
    assert len(out) == 5
