"""Executing a `RunPlan`: the one way a run runs.

* thread: one kernel on this thread's loop (a new uvloop for `execute`, the
  caller's own for `execute_async`, shared cooperatively);
* process and cluster: pinned kernel processes (`_cores.py`); the caller
  waits for them (on a thread, for `execute_async`, so its loop goes on).

`get_flow()` gives the flow in the process that calls it: the caller's flow
itself (forked kernels inherit it), or, from the command line, the pipeline
file imported by each kernel process on its own.
"""

from __future__ import annotations

import asyncio
import gc
from contextlib import contextmanager

import uvloop

from kernel.runtime._runtime import Runtime
from kernel.scheduling._kernel import Kernel

from ._host_gc import host_heap_frozen
from ._plan import THREAD, RunPlan


def execute(plan: RunPlan, get_flow) -> list[dict]:
    """Run to the end, blocking; returns each kernel's results (on a
    cluster's process 0: every kernel's; elsewhere none)."""
    # For a run on cores too: unpickling the kernels' results (a windowed
    # sum's 126,000 result triples) at the default threshold ran ~180 young
    # and one full collection over the caller's heap, 20-50 ms of a ~350 ms
    # run (benches/pipelines.py windowed sum on 2 kernels).
    with gc_threshold(plan.gc_threshold):
        if plan.mode == THREAD:
            return [uvloop.run(_one_kernel(plan, get_flow()))]
        return _on_cores(plan, get_flow)


async def execute_async(plan: RunPlan, get_flow) -> list[dict]:
    """Run to the end on the running loop, sharing it (the caller's GC
    thresholds are left as they are: it is the host application's process;
    only its heap is kept out of full collections meanwhile, `_host_gc.py`)."""
    if plan.mode == THREAD:
        with host_heap_frozen():  # full collections walk the run's objects, not the host's heap
            return [await _one_kernel(plan, get_flow())]
    return await _in_thread(lambda cancel: _on_cores(plan, get_flow, cancel))


async def _one_kernel(plan: RunPlan, flow) -> dict:
    kernel = Kernel(**plan.kernel.as_kwargs())
    coordinator = None if plan.snapshots is None else plan.snapshots.local()
    runtime = Runtime(flow.graph, kernel, coordinator=coordinator)
    kernel.at_start(runtime.start)
    try:
        await kernel.join()
    finally:
        if coordinator is not None:
            coordinator.close()  # a failed run's snapshot writes end before it returns
    return runtime.results()


def _on_cores(plan: RunPlan, get_flow, cancel=None) -> list[dict]:
    from ._cores import run_on_cores

    epochs = None if plan.snapshots is None else plan.snapshots.for_processes()
    return run_on_cores(_kernel_process(get_flow, plan), plan.cores, epochs=epochs,
                        cluster=plan.cluster, cancel=cancel)


def _kernel_process(get_flow, plan: RunPlan):
    """What each kernel process runs: build the flow's runtime on a kernel
    with its transport, run it, hand back its results."""
    options = plan.kernel.as_kwargs()

    async def run_kernel(index: int, peers: int, transport, coordinator=None) -> dict:
        flow = get_flow()
        kernel = Kernel(index=index, peers=peers, **options)
        runtime = Runtime(flow.graph, kernel, transport, coordinator)
        kernel.at_start(runtime.start)
        with gc_threshold(plan.gc_threshold):
            try:
                await kernel.join()
            finally:
                transport.close()
        return runtime.results()

    return run_kernel


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


async def _in_thread(launch):
    """Run `launch(cancel)` (a blocking launcher) on a thread; if this
    coroutine is cancelled, the launcher is told through `cancel` (a pipe it
    waits on with its kernels), stops them, and is waited for, so no kernel
    process outlives the cancellation and the loop's executor can shut down."""
    import multiprocessing

    cancel_in, cancel_out = multiprocessing.Pipe(duplex=False)
    loop = asyncio.get_running_loop()
    launched = loop.run_in_executor(None, launch, cancel_in)
    try:
        return await asyncio.shield(launched)
    except asyncio.CancelledError:
        cancel_out.send("cancelled")
        try:
            await launched
        except BaseException:  # it ends with the cancellation's error: ours is the cancellation
            pass
        raise
    finally:
        cancel_in.close()
        cancel_out.close()
