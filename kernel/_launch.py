"""Running a dataflow: `run` (blocking, own uvloop) and `run_async` (the
caller's loop)."""

from __future__ import annotations

import asyncio
import gc
from contextlib import contextmanager

import uvloop

from ._kernel import Kernel
from ._runtime import Runtime


def _check_cores(cores: int) -> None:
    if not isinstance(cores, int) or cores < 1:
        raise ValueError(f"cores must be a positive int, got {cores!r}")
    if cores != 1:
        raise NotImplementedError("cores > 1 (one pinned kernel process per core) is not built yet")


async def run_async(flow, *, cores: int = 1, clock=None, budget: float = 0.001,
                    shares: dict[str, float] | None = None, stall_threshold: float = 0.025) -> None:
    """Run `flow` on one kernel on the running event loop, sharing it.

    The kernel hands the loop back at least every `budget` seconds, so the
    host application's tasks and I/O keep running. Raises the first failure
    (an `OperatorError` naming the operator, function and record). Afterwards
    every `collect()` handle's `.items` holds the results.
    """
    _check_cores(cores)
    kernel = Kernel(clock=clock, budget=budget, shares=shares, stall_threshold=stall_threshold)
    runtime = Runtime(flow.graph, kernel)
    kernel.at_start(runtime.start)
    await kernel.join()
    flow._results_delivered([runtime.results()])


# A pipeline allocates short-lived containers (batches, pairs) by the
# million; with CPython's default gen-0 threshold (700 allocations) the
# collector runs thousands of times per second and costs 15-20% of word
# count's time (benches/pipelines.py). A blocking run owns its thread's
# work, so it raises the threshold for its duration and restores it after.
DEFAULT_GC_THRESHOLD = 50_000


@contextmanager
def gc_threshold(threshold: int | None):
    """Raise the generation-0 GC threshold for the duration (None: leave it)."""
    if threshold is None:
        yield
        return
    old = gc.get_threshold()
    gc.set_threshold(threshold, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def run(flow, *, cores: int = 1, gc_threshold_during_run: int | None = DEFAULT_GC_THRESHOLD,
        **options) -> None:
    """Run `flow` to completion on a new uvloop event loop (blocking).

    Options are those of `run_async`. Inside a running event loop use
    `await run_async(flow)` instead. `gc_threshold_during_run` is the
    generation-0 GC threshold while the run lasts (None leaves the
    process's GC settings alone); `run_async` never touches them, since it
    shares its process with the host application.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("run() blocks and cannot be called from a running event loop; "
                           "use `await run_async(flow)` there")
    _check_cores(cores)
    with gc_threshold(gc_threshold_during_run):
        uvloop.run(run_async(flow, cores=cores, **options))
