"""Running a dataflow: `run` (blocking) and `run_async` (the caller's loop).

One core: a kernel on the caller's loop (`run_async`) or on a new uvloop
(`run`). Several cores: one pinned kernel process per core (`_launcher.py`),
the caller waiting for their results.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from contextlib import contextmanager

import uvloop

from kernel.runtime._runtime import Runtime
from kernel.scheduling._kernel import Kernel

# A pipeline allocates short-lived containers (batches, pairs) by the
# million; with CPython's default gen-0 threshold (700 allocations) the
# collector runs thousands of times per second and costs 15-20% of word
# count's time (benches/pipelines.py). A blocking run and a kernel process
# own their thread's work, so they raise the threshold while they run.
DEFAULT_GC_THRESHOLD = 50_000
DEFAULT_EPOCH_INTERVAL = 1.0
DEFAULT_STARTUP_TIMEOUT = 30.0  # seconds a cluster's processes have to find each other

log = logging.getLogger("kernel")


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


def _check_cores(cores: int) -> None:
    if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
        raise ValueError(f"cores must be a positive int, got {cores!r}")
    _warn_if_oversubscribed(cores)


def _warn_if_oversubscribed(cores: int) -> None:
    """More kernels than CPUs this process may use works (kernels share
    CPUs, an idle one sleeps) but is slower than fewer kernels, so it is
    said, not refused: tests run several kernels on small machines, and a
    cluster's processes must agree on `cores` even where CPUs differ."""
    cpus = len(os.sched_getaffinity(0))
    if cores > cpus:
        log.warning("cores=%d, but this process may use only %d CPU%s (os.sched_getaffinity): "
                    "the kernels will share CPUs, and run slower than with cores=%d",
                    cores, cpus, "" if cpus == 1 else "s", cpus)


def _kernel_options(clock, budget, shares, stall_threshold) -> dict:
    return {"clock": clock, "budget": budget, "shares": shares, "stall_threshold": stall_threshold}


def kernel_process_main(get_flow, options: dict, gc_threshold_value: int | None):
    """What each kernel process runs: build the flow's runtime on a kernel
    with its transport, run it, hand back its results."""

    async def run_kernel(index: int, peers: int, transport, coordinator=None) -> dict:
        flow = get_flow()
        kernel = Kernel(index=index, peers=peers, **options)
        runtime = Runtime(flow.graph, kernel, transport, coordinator)
        kernel.at_start(runtime.start)
        with gc_threshold(gc_threshold_value):
            try:
                await kernel.join()
            finally:
                transport.close()
        return runtime.results()

    return run_kernel


def run_on_cores(get_flow, cores: int, options: dict, gc_threshold_value: int | None,
                 epochs=None, cluster=None, cancel=None) -> list[dict]:
    from kernel.execution._cores import run_on_cores as launch

    return launch(kernel_process_main(get_flow, options, gc_threshold_value), cores, epochs=epochs,
                  cluster=cluster, cancel=cancel)


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


def _cluster(flow, cores: int, process_id, peers, secret, tls, startup_timeout):
    """The checked ClusterPlan for `run(..., process_id=, peers=)`, or None."""
    if peers is None:
        if process_id is not None:
            raise ValueError("process_id needs peers (every process's host:port)")
        return None
    from kernel.execution._cluster import cluster_plan

    return cluster_plan(0 if process_id is None else process_id, peers, cores, secret=secret, tls=tls,
                        startup_timeout=startup_timeout, fingerprint=flow_fingerprint(flow))


def _refuse_state_in_cluster(state_dir) -> None:
    if state_dir is not None:
        raise ValueError("state_dir is not supported with peers yet: a cluster run that loses a "
                         "process ends with an error naming it, and starts again from the beginning")


class _Snapshots:
    """What a run with a `state_dir` starts from (opened in the caller)."""

    def __init__(self, flow, state_dir, epoch_interval: float, cores: int) -> None:
        # The one place the kernel reaches into `state`, kept to the facade
        # (as `_dataflow.py` reaches into `operators`).
        from kernel.state import SnapshotStore

        if not (isinstance(epoch_interval, (int, float)) and 0 < epoch_interval < float("inf")):
            raise ValueError(f"epoch_interval must be a positive number of seconds, got {epoch_interval!r}")
        self.state_dir = state_dir
        self.interval = float(epoch_interval)
        self.store = SnapshotStore(state_dir)
        self.store.claim(flow_fingerprint(flow), cores)
        latest = self.store.latest(cores)
        self.epoch, self.finished, self.blobs = latest if latest else (0, False, None)
        self._tell()

    def _tell(self) -> None:
        """Say what this run starts from when it is not a fresh start. A
        finished flow still runs, restored as ended: that publishes the
        files a crash during its final commit left hidden."""
        if self.finished:
            log.warning("state_dir %s: this flow already ran to the end (epoch %d); nothing to do "
                        "but publish any of its files left hidden", self.state_dir, self.epoch)
        elif self.epoch:
            log.warning("state_dir %s: resuming from epoch %d", self.state_dir, self.epoch)

    def open_store(self):
        from kernel.state import SnapshotStore

        return SnapshotStore(self.state_dir)

    def local(self):
        from kernel.runtime._coordinate import LocalCoordinator

        return LocalCoordinator(self.store, self.interval, self.blobs and self.blobs[0], self.epoch,
                                self.finished)

    def for_processes(self) -> tuple:
        return (self.open_store, self.interval, self.blobs, self.epoch, self.store, self.finished)


def flow_fingerprint(flow) -> str:
    """The flow's fingerprint (`Graph.fingerprint`): what its snapshots depend on."""
    return flow.graph.fingerprint()


async def run_async(flow, *, cores: int = 1, clock=None, budget: float = 0.001,
                    shares: dict[str, float] | None = None, stall_threshold: float = 0.025,
                    state_dir=None, epoch_interval: float = DEFAULT_EPOCH_INTERVAL,
                    process_id: int | None = None, peers=None, secret=None, tls=None,
                    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT) -> None:
    """Run `flow` on the running event loop, sharing it.

    With `cores=1` the kernel runs on this loop and hands it back at least
    every `budget` seconds, so the host application's tasks and I/O keep
    running. With `cores=N` the kernels run in N pinned processes and this
    coroutine waits for them without blocking the loop. Raises the first
    failure (an `OperatorError` naming the operator, function and record;
    with several cores a `KernelProcessError` naming the kernel, with the
    kernel's error as its cause). Afterwards every `collect()` handle's
    `.items` holds the results. `process_id` and `peers` make this process
    one of a cluster (see `run`).
    """
    _check_cores(cores)
    options = _kernel_options(clock, budget, shares, stall_threshold)
    cluster = _cluster(flow, cores, process_id, peers, secret, tls, startup_timeout)
    if cluster is not None:
        _refuse_state_in_cluster(state_dir)
        results = await _in_thread(lambda cancel: run_on_cores(
            lambda: flow, cores, options, DEFAULT_GC_THRESHOLD, None, cluster, cancel))
        flow._results_delivered(results)
        return
    snapshots = None if state_dir is None else _Snapshots(flow, state_dir, epoch_interval, cores)
    if cores > 1:
        epochs = None if snapshots is None else snapshots.for_processes()
        results = await _in_thread(lambda cancel: run_on_cores(
            lambda: flow, cores, options, DEFAULT_GC_THRESHOLD, epochs, None, cancel))
        flow._results_delivered(results)
        return
    kernel = Kernel(**options)
    runtime = Runtime(flow.graph, kernel, coordinator=None if snapshots is None else snapshots.local())
    kernel.at_start(runtime.start)
    await kernel.join()
    flow._results_delivered([runtime.results()])


def run(flow, *, cores: int = 1, gc_threshold_during_run: int | None = DEFAULT_GC_THRESHOLD,
        clock=None, budget: float = 0.001, shares: dict[str, float] | None = None,
        stall_threshold: float = 0.025, state_dir=None,
        epoch_interval: float = DEFAULT_EPOCH_INTERVAL, process_id: int | None = None, peers=None,
        secret=None, tls=None, startup_timeout: float = DEFAULT_STARTUP_TIMEOUT) -> None:
    """Run `flow` to completion (blocking).

    `cores=1`: one kernel on a new uvloop event loop in this thread.
    `cores=N`: one kernel process per core, each pinned to its own CPU, with
    exactly the results of one core. Inside a running event loop use
    `await run_async(flow)` instead. `gc_threshold_during_run` is the
    generation-0 GC threshold while the run lasts (None leaves the
    process's GC settings alone); `run_async` with one core never touches
    them, since it shares its process with the host application.

    A cluster: `peers` lists every process's `host:port` (a string
    `"h0:p0,h1:p1"` or a list), `process_id` says which one this is. Each
    process runs `cores` kernels, numbered across the cluster, linked by
    authenticated websockets; the shared `secret` defaults to the
    environment variable KERNEL_SECRET; `tls=(cert, key, ca)` turns on TLS;
    peers may start in any order within `startup_timeout` seconds. Every
    process must run the same flow with the same `cores`. `collect()`
    results are gathered on process 0 (empty elsewhere).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("run() blocks and cannot be called from a running event loop; "
                           "use `await run_async(flow)` there")
    _check_cores(cores)
    options = _kernel_options(clock, budget, shares, stall_threshold)
    cluster = _cluster(flow, cores, process_id, peers, secret, tls, startup_timeout)
    if cluster is not None:
        _refuse_state_in_cluster(state_dir)
        flow._results_delivered(run_on_cores(lambda: flow, cores, options, gc_threshold_during_run,
                                             None, cluster))
        return
    if cores > 1:
        snapshots = None if state_dir is None else _Snapshots(flow, state_dir, epoch_interval, cores)
        epochs = None if snapshots is None else snapshots.for_processes()
        # Here too: unpickling the kernels' results (a windowed sum's 126,000
        # result triples) at the default threshold ran ~180 young and one
        # full collection over the caller's heap, 20-50 ms of a ~350 ms run
        # (benches/pipelines.py windowed sum on 2 kernels).
        with gc_threshold(gc_threshold_during_run):
            flow._results_delivered(run_on_cores(lambda: flow, cores, options, gc_threshold_during_run,
                                                 epochs))
        return
    with gc_threshold(gc_threshold_during_run):
        uvloop.run(run_async(flow, **options, state_dir=state_dir, epoch_interval=epoch_interval))
