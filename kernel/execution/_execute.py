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
    runtime = Runtime(flow.graph, kernel, coordinator=coordinator, metrics=plan.dashboard is not None)
    server = None
    if plan.dashboard is not None:  # on this loop, reading the runtime when scraped
        from kernel.metrics import listen, serve_on_loop

        server = await serve_on_loop(listen(plan.dashboard), lambda: [runtime.metrics_snapshot()])
    kernel.at_start(runtime.start)
    try:
        await kernel.join()
    finally:
        if coordinator is not None:
            coordinator.close()  # a failed run's snapshot writes end before it returns
        if server is not None:
            await server.cleanup()
    return runtime.results()


def _on_cores(plan: RunPlan, get_flow, cancel=None) -> list[dict]:
    from ._cores import run_on_cores

    epochs = None if plan.snapshots is None else plan.snapshots.for_processes()
    # a cluster's processes agree on the epoch they resume from once linked
    agreement = None if epochs is None or plan.cluster is None else plan.snapshots.agreement()
    if plan.dashboard is None:
        return run_on_cores(_kernel_process(get_flow, plan), plan.cores, epochs=epochs,
                            cluster=plan.cluster, cancel=cancel, agreement=agreement)
    from kernel.metrics import MetricsBlock, MetricsServerThread, listen

    # Bound before the kernels fork (a port in use fails the run before it
    # starts); served from a thread started after they have forked, so no
    # kernel inherits a thread's locks.
    sock = listen(plan.dashboard)
    blocks = [MetricsBlock() for _ in range(plan.cores)]
    server = MetricsServerThread(sock, lambda: [s for b in blocks if (s := b.read()) is not None])
    try:
        return run_on_cores(_kernel_process(get_flow, plan, blocks), plan.cores, epochs=epochs,
                            cluster=plan.cluster, cancel=cancel, on_started=lambda _pids: server.start(),
                            agreement=agreement)
    finally:
        server.stop()
        for block in blocks:
            block.close()


def _kernel_process(get_flow, plan: RunPlan, blocks=None):
    """What each kernel process runs: build the flow's runtime on a kernel
    with its transport, run it, hand back its results. With metrics
    `blocks` (one per kernel of this process), it publishes its metrics in
    its own."""
    options = plan.kernel.as_kwargs()
    first = plan.cluster.first_kernel if plan.cluster is not None else 0

    async def run_kernel(index: int, peers: int, transport, coordinator=None) -> dict:
        flow = get_flow()
        kernel = Kernel(index=index, peers=peers, **options)
        runtime = Runtime(flow.graph, kernel, transport, coordinator, metrics=blocks is not None)
        kernel.at_start(runtime.start)
        block = None if blocks is None else blocks[index - first]
        if block is not None:
            kernel.at_start(lambda: _publish_metrics(kernel, runtime, block))
        with gc_threshold(plan.gc_threshold):
            try:
                await kernel.join()
            finally:
                transport.close()
                if block is not None:
                    block.write(runtime.metrics_snapshot())  # the final counts, also of a failed run
        return runtime.results()

    return run_kernel


def _publish_metrics(kernel, runtime, block) -> None:
    """Write the runtime's snapshot into its block now and every
    PUBLISH_INTERVAL after (a processing-time timer: it never keeps the run
    alive)."""
    from kernel.metrics import PUBLISH_INTERVAL

    if not block.write(runtime.metrics_snapshot()):
        kernel.logger.warning("metrics: the snapshot of %d steps does not fit its block; not published",
                              len(runtime.instances))
        return
    kernel.call_later(PUBLISH_INTERVAL, lambda: _publish_metrics(kernel, runtime, block))


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
