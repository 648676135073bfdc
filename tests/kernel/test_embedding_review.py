"""Review of the kernel embedded in an application: failures and
cancellations of `run` / `run_async` must leave nothing behind (processes,
shared memory, file descriptors) and their handles must say what the failed
run did. Each test here fails on the code as reviewed."""

from __future__ import annotations

import gc
import os

import pytest

from kernel import Dataflow, OperatorError, run, run_async
from kernel.execution._supervisor import KernelProcessError

pytestmark = pytest.mark.usefixtures("no_leaks")


def _fds() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor
            continue
    return out


def _fails_at_5(x):
    if x == 5:
        raise ValueError("boom")
    return x


def _warm_up() -> None:
    """A first run on cores opens a few descriptors once per process (kept
    for good, not per run): done before counting."""
    flow = Dataflow("warm")
    flow.from_iterable(range(4)).collect()
    run(flow, cores=2)


@pytest.mark.parametrize("how", ["run", "run_async"])
def test_a_failed_run_on_cores_whose_error_the_application_keeps_holds_no_descriptors(how):
    # An application that keeps the error (logs it later, stores it on a job
    # record, hands it to a future) kept 2 pipes per kernel open for as long
    # as it held it: the launcher's `multiprocessing.Process` objects are
    # never closed (`run_on_cores`'s finally joins them but leaves their
    # sentinel pipes to the garbage collector), and the error's traceback
    # holds the launcher's frames, so they live as long as the error does.
    # Ten failed runs kept: 40 descriptors.
    import asyncio

    _warm_up()
    gc.collect()
    before = _fds()
    kept = []
    for _ in range(3):
        flow = Dataflow("fails")
        flow.from_iterable(range(10)).map(_fails_at_5).collect()
        try:
            if how == "run":
                run(flow, cores=2)
            else:
                asyncio.run(run_async(flow, cores=2))
        except KernelProcessError as exc:
            kept.append(exc)
    assert len(kept) == 3
    gc.collect()
    leaked = {fd: what for fd, what in _fds().items() if fd not in before}
    assert not leaked, f"descriptors held by the kept errors of 3 failed runs: {leaked}"


@pytest.mark.parametrize("cores", [1, 2])
def test_collect_items_after_a_failed_run_are_not_the_previous_runs_results(cores):
    # A flow run again (the documented way to rerun it) whose second run
    # fails: its collect() handle still held the first run's complete
    # results, so an application reading `.items` after catching the error
    # took another run's records for this run's (no error says they are
    # stale). They must be this run's (empty, or what reached the step
    # before the failure), never the earlier run's.
    fail = {"now": False}

    def maybe_fails(x):
        if fail["now"] and x == 5:
            raise ValueError("boom")
        return x

    flow = Dataflow("again")
    collected = flow.from_iterable(range(10)).map(maybe_fails).collect()
    run(flow, cores=cores)
    assert sorted(collected.items) == list(range(10))
    fail["now"] = True
    with pytest.raises((OperatorError, KernelProcessError)):
        run(flow, cores=cores)
    assert sorted(collected.items) != list(range(10)), (
        "after the failed run, .items still holds the earlier run's complete results")
