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
import os
import signal
import threading
from contextlib import contextmanager, nullcontext

from kernel.runtime._runtime import Runtime
from kernel.scheduling._kernel import Kernel
from kernel.scheduling._signal_mask import main_thread_signals

from . import _ring_exit
from ._host_gc import host_heap_frozen
from ._inherited_descriptors import let_go_unreached
from ._interrupt import first_ctrl_c_interrupts, sigint_handler_kept
from ._listings import board_here, listings_of
from ._plan import PROGRESS_INTERVAL, THREAD, RunPlan
from ._results import pack as pack_results
from ._results import unpack as unpack_results
from ._written_files import by_whole_lines, flow_files, with_opened_since, write_out


def execute(plan: RunPlan, get_flow) -> list[dict]:
    """Run to the end, blocking; returns each kernel's results (on a
    cluster's process 0: every kernel's; elsewhere none)."""
    # For a run on cores too: unpickling the kernels' results (a windowed
    # sum's 126,000 result triples) at the default threshold ran ~180 young
    # and one full collection over the caller's heap, 20-50 ms of a ~350 ms
    # run (benches/pipelines.py windowed sum on 2 kernels).
    with gc_threshold(plan.gc_threshold), _store_closed(plan):
        if plan.mode == THREAD:
            with sigint_handler_kept():
                return [_ring_exit.run(_one_kernel(plan, get_flow(), interruptible=True))]
        return _on_cores(plan, get_flow)


async def execute_async(plan: RunPlan, get_flow) -> list[dict]:
    """Run to the end on the running loop, sharing it (the caller's GC
    thresholds are left as they are: it is the host application's process;
    only its heap is kept out of full collections meanwhile, `_host_gc.py`)."""
    with _store_closed(plan):
        if plan.mode == THREAD:
            with host_heap_frozen():  # full collections walk the run's objects, not the host's heap
                return [await _one_kernel(plan, get_flow())]
        return await _in_thread(lambda cancel: _on_cores(plan, get_flow, cancel))


@contextmanager
def _store_closed(plan: RunPlan):
    """A one-process run's snapshot store closed when the run ends, however
    it ends (`Snapshots.close`)."""
    try:
        yield
    finally:
        if plan.snapshots is not None:
            plan.snapshots.close()


async def _one_kernel(plan: RunPlan, flow, interruptible: bool = False) -> dict:
    """One kernel's run on this loop; `interruptible`: a blocking run's own
    loop, whose first Ctrl-C stops the kernel's blocked work at once
    (`_interrupt.py`; never the host's loop of `run_async`)."""
    kernel = Kernel(**plan.kernel.as_kwargs())
    coordinator = None if plan.snapshots is None else plan.snapshots.local()
    runtime = Runtime(flow.graph, kernel, coordinator=coordinator, metrics=plan.observed)
    server = None
    outcome: dict = {}  # how the run ended, for the dashboard's last state
    if plan.dashboard is not None:  # on this loop, reading the runtime when scraped
        from kernel.metrics import announce, listen, serve_on_loop
        from kernel.metrics._block import without_surrogates

        graph = without_surrogates(flow.graph.describe())  # as the kernel processes' graph block
        sock = listen(plan.dashboard)
        server = await serve_on_loop(sock, lambda: [runtime.metrics_snapshot()], lambda: graph,
                                     outcome=outcome)
        announce(sock)  # (its port, where the system picked it: the one way to learn it)
    kernel.at_start(runtime.start)
    if plan.progress is not None:
        kernel.at_start(lambda: _tell_progress(kernel, runtime, plan.progress))
    passed_on: list[int] = []  # the signals that had the Runner cancel the run
    try:
        with first_ctrl_c_interrupts(kernel) if interruptible else nullcontext(passed_on) as passed_on:
            await kernel.join()
    except BaseException as exc:
        runtime.release()  # (its steps' open files: a kernel process's close as it exits)
        if server is not None:
            from kernel.metrics._dashboard import run_outcome

            outcome.update(run_outcome(_as_the_caller_gets_it(exc, passed_on)))
        raise
    finally:
        if coordinator is not None:
            coordinator.close()  # a failed run's snapshot writes end before it returns
        if server is not None:
            await server.cleanup()
        if plan.progress is not None:
            plan.progress([runtime.metrics_snapshot()], True)
    # the steps' result(): one blocked there is stopped by a first Ctrl-C too
    with first_ctrl_c_interrupts(kernel, runtime) if interruptible else nullcontext():
        return runtime.results()


def _as_the_caller_gets_it(error: BaseException, passed_on: list[int]) -> BaseException:
    """What ended a one-kernel run, as its caller gets it: a Ctrl-C (or
    the command line's SIGTERM, passed on as one) that had asyncio's Runner
    cancel the run is the caller's KeyboardInterrupt (`Terminated`), not the
    CancelledError the run's task met (the page said "stopped:
    CancelledError:" where several kernels' said "stopped: KeyboardInterrupt:")."""
    if not passed_on or not isinstance(error, asyncio.CancelledError):
        return error
    from ._supervisor import Terminated

    return Terminated() if passed_on[-1] == signal.SIGTERM else KeyboardInterrupt()


def _tell_progress(kernel, runtime, progress) -> None:
    """One kernel: hand `progress` this kernel's snapshot now and every
    PROGRESS_INTERVAL after (a processing-time timer: it never keeps the
    run alive)."""
    progress([runtime.metrics_snapshot()], False)
    kernel.call_later(PROGRESS_INTERVAL, lambda: _tell_progress(kernel, runtime, progress))


def _on_cores(plan: RunPlan, get_flow, cancel=None) -> list[dict]:
    from ._cores import run_on_cores

    epochs = None if plan.snapshots is None else plan.snapshots.for_processes()
    # a cluster's processes agree on the epoch they resume from once linked
    agreement = None if epochs is None or plan.cluster is None else plan.snapshots.agreement()
    # and on one listing of the bounded sources' files, taken by each launcher
    # now, before its kernels fork: process 0's (kernel/execution/_listings.py)
    listings = None if plan.cluster is None else listings_of(get_flow().graph)
    if not plan.observed:
        return unpack_results(run_on_cores(_kernel_process(get_flow, plan), plan.cores, epochs=epochs,
                                           cluster=plan.cluster, cancel=cancel, agreement=agreement,
                                           listings=listings), lambda: _step_names(get_flow))
    from kernel.metrics import MetricsBlock, MetricsServerThread, announce, listen

    # Bound before the kernels fork (a port in use fails the run before it
    # starts); served from a thread started after they have forked, so no
    # kernel inherits a thread's locks. The first kernel describes the
    # graph in a block of its own (the launcher need not import the flow).
    sock = None if plan.dashboard is None else listen(plan.dashboard)  # the server thread closes it
    if sock is not None:
        announce(sock)  # (listening already: a client that comes before the kernels start waits)
    blocks = [MetricsBlock() for _ in range(plan.cores)]
    graph_block = MetricsBlock()
    # a cluster's relay reports what its links sent in a block of its own
    links_block = MetricsBlock(1 << 16) if plan.cluster is not None else None
    link_report = None
    if links_block is not None:
        process = plan.cluster.process

        def link_report(sent: dict) -> None:
            links_block.write({"process": process, "sent": sent})

    def collect() -> list[dict]:
        snapshots = [s for b in blocks if (s := b.read()) is not None]
        links = links_block.read() if links_block is not None else None
        if links is not None and snapshots:  # carried by this process's first kernel's snapshot
            snapshots[0] = {**snapshots[0], "links": links}
        return snapshots

    threads = []
    if sock is not None:
        threads.append(MetricsServerThread(sock, collect, graph_block.read))
    if plan.progress is not None:
        threads.append(_Ticker(PROGRESS_INTERVAL, lambda: plan.progress(collect(), False)))

    def started(_pids) -> None:
        for thread in threads:
            thread.start()

    error = None  # what ended the run, for the dashboard's last state
    try:
        per_kernel = run_on_cores(_kernel_process(get_flow, plan, blocks, graph_block), plan.cores,
                                  epochs=epochs, cluster=plan.cluster, cancel=cancel, on_started=started,
                                  link_report=link_report, agreement=agreement, listings=listings)
        return unpack_results(per_kernel, lambda: _step_names(get_flow))
    except BaseException as exc:
        error = exc
        raise
    finally:
        for thread in threads:
            thread.stop(error)
        if plan.progress is not None:
            plan.progress(collect(), True)
        for block in [*blocks, graph_block, *([links_block] if links_block is not None else [])]:
            block.close()


class _Ticker:
    """Calls `fn()` every `interval` seconds on a thread of the launcher, until stopped."""

    def __init__(self, interval: float, fn) -> None:
        import threading

        self._interval = interval
        self._fn = fn
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="progress", daemon=True)

    def start(self) -> None:
        with main_thread_signals():
            self._thread.start()

    def stop(self, _error: BaseException | None = None) -> None:  # (as MetricsServerThread's)
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _tick(self) -> None:
        while not self._stopped.wait(self._interval):
            self._fn()


def _step_names(get_flow) -> dict[int, str]:
    return {node.id: node.name for node in get_flow().graph.nodes}


def _kernel_process(get_flow, plan: RunPlan, blocks=None, graph_block=None):
    """What each kernel process runs: build the flow's runtime on a kernel
    with its transport, run it, hand back its results. With metrics
    `blocks` (one per kernel of this process), it publishes its metrics in
    its own, and the process's first kernel describes the graph in
    `graph_block`."""
    options = plan.kernel.as_kwargs()
    first = plan.cluster.first_kernel if plan.cluster is not None else 0

    async def run_kernel(index: int, peers: int, transport, coordinator=None) -> dict:
        flow = get_flow()
        # (before any source reads: a pipe it reads ends only once no kernel holds its writer)
        let_go_unreached([node.factory for node in flow.graph.nodes])
        files = flow_files(flow.graph)  # written to by its steps, from before the fork (or the import)
        by_whole_lines(files)
        kernel = Kernel(index=index, peers=peers, **options)
        kernel.context.processes = plan.cluster.processes if plan.cluster is not None else 1
        kernel.context.listings = board_here()
        runtime = Runtime(flow.graph, kernel, transport, coordinator, metrics=blocks is not None)
        kernel.at_start(runtime.start)
        block = None if blocks is None else blocks[index - first]
        if graph_block is not None and index == first:
            graph_block.write(flow.graph.describe())
        if block is not None:
            if hasattr(transport, "ring_used_bytes"):  # rings between kernel processes
                runtime.observers.append(lambda: {"ring_used_bytes": transport.ring_used_bytes()})
            kernel.at_start(lambda: _publish_metrics(kernel, runtime, block))
        with gc_threshold(plan.gc_threshold):
            try:
                await kernel.join()
            except BaseException:
                write_out(with_opened_since(files, flow.graph), quietly=True)  # written before the failure
                raise
            finally:
                transport.close()
                if block is not None:
                    block.write(runtime.metrics_snapshot())  # the final counts, also of a failed run
        write_out(with_opened_since(files, flow.graph))
        # encoded here, in parallel, and named by step should a record not pickle
        return pack_results(runtime.results(), _step_names(lambda: flow))

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


# Runs that overlap (`run()` on several threads of one process) share the
# process's thresholds: the first to begin keeps the process's own, the last
# to end puts them back. Each restoring what it had found left the raised
# threshold in place for good whenever they ended in the order they began
# (two threads' runs: 700 -> 50,000 after both had ended).
_threshold_lock = threading.Lock()
_threshold_runs = 0  # runs under way that raised the threshold
_threshold_saved: tuple = ()  # the process's own thresholds, from before the first of them


def _forget_threshold_runs() -> None:
    # a forked kernel process starts afresh: its parent's runs are not its own,
    # and a lock another thread held at the fork would never be released
    global _threshold_lock, _threshold_runs
    _threshold_lock = threading.Lock()
    _threshold_runs = 0


os.register_at_fork(after_in_child=_forget_threshold_runs)


@contextmanager
def gc_threshold(threshold: int | None):
    """Raise the generation-0 GC threshold for the duration (None: leave it)."""
    global _threshold_runs, _threshold_saved
    if threshold is None:
        yield
        return
    with _threshold_lock:
        current = gc.get_threshold()
        if _threshold_runs == 0:
            _threshold_saved = current
        _threshold_runs += 1
        gc.set_threshold(threshold, *current[1:])
    try:
        yield
    finally:
        with _threshold_lock:
            _threshold_runs -= 1
            if _threshold_runs == 0:
                gc.set_threshold(*_threshold_saved)


def on_a_thread(work, name: str) -> asyncio.Future:
    """A future of the running loop, settled with `work()`'s result or
    error, which runs on a thread of its own (not the loop's default
    executor: `_in_thread` says why). A daemon: a process that exits
    meanwhile is not held by it (a run's kernels die with it: PR_SET_PDEATHSIG)."""
    from kernel.scheduling._from_threads import call_soon_from_thread

    loop = asyncio.get_running_loop()
    settled = loop.create_future()

    def settle(result, error) -> None:
        if not settled.done():
            if error is not None:
                settled.set_exception(error)
            else:
                settled.set_result(result)

    def worker() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting coroutine, as an executor would
            call_soon_from_thread(loop, settle, None, exc)
        else:
            call_soon_from_thread(loop, settle, result, None)

    threading.Thread(target=worker, name=name, daemon=True).start()
    return settled


async def _in_thread(launch):
    """Run `launch(cancel)` (a blocking launcher) on a thread; if this
    coroutine is cancelled, the launcher is told through `cancel` (a pipe it
    waits on with its kernels), stops them, and is waited for, so no kernel
    process outlives the cancellation.

    A thread of its own, not the loop's default executor: a run holds its
    thread for as long as it runs (for ever, for a stream), and the default
    executor has min(32, CPUs + 4) threads, shared with the host: with six
    runs on a 2-CPU machine, the host's `getaddrinfo` (aiohttp's DNS
    look-ups), `to_thread` and `run_in_executor` calls waited for ever, a
    seventh run never started, and cancelling it hung, waiting for a
    thread that never came."""
    import multiprocessing

    cancel_in, cancel_out = multiprocessing.Pipe(duplex=False)
    launched = on_a_thread(lambda: launch(cancel_in), "kernel launcher")
    try:
        return await asyncio.shield(launched)
    except asyncio.CancelledError:
        cancel_out.send("cancelled")
        # Shielded, and again if cancelled again: a second cancel (a shutdown
        # cancelling twice, a timeout around a cancel) ended this wait at
        # once, so the caller got its CancelledError with a kernel still
        # running and the cancel pipe was closed under the launcher.
        while not launched.done():
            try:
                await asyncio.shield(launched)
            except asyncio.CancelledError:
                continue
            except BaseException:  # it ends with the cancellation's error: ours is the cancellation
                break
        raise
    finally:
        cancel_in.close()
        cancel_out.close()
