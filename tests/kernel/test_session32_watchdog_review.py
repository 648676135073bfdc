"""Review of the kernel watchdog (kernel/scheduling/_watchdog.py): two
kernels sharing one loop each blamed the other's blocked step."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import sys
import threading
import warnings

import pytest

from kernel import Dataflow, run, run_async
from kernel.scheduling import _watchdog

BLOCKED = "has not handed the event loop back"


@pytest.fixture
def quick(monkeypatch):
    """The watchdog looking every 20 ms and reporting from 0.3 s."""
    monkeypatch.setattr(_watchdog, "REPORT_AFTER", 0.3)
    monkeypatch.setattr(_watchdog, "CHECK", 0.02)


class _Reports(logging.Handler):
    """The watchdog's reports on logger `kernel`; `on_report(record)` is
    called at each, on the watchdog's thread."""

    def __init__(self, on_report=None) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.on_report = on_report
        self.arrived = threading.Event()

    def emit(self, record) -> None:
        if BLOCKED not in record.getMessage():
            return
        self.records.append(record)
        self.arrived.set()
        if self.on_report is not None:
            self.on_report(record)


@pytest.fixture
def reports():
    made = []

    def attach(on_report=None) -> _Reports:
        handler = _Reports(on_report)
        logging.getLogger("kernel").addHandler(handler)
        made.append(handler)
        return handler

    yield attach
    for handler in made:
        logging.getLogger("kernel").removeHandler(handler)


def _messages(handler: _Reports) -> list[str]:
    return [record.getMessage().split(":", 1)[0] for record in handler.records]


async def test_two_kernels_on_one_loop_report_a_blocked_step_once_by_its_own_kernel(quick, reports):
    """Two `run_async` runs share the test's loop; a map of the first blocks
    until its kernel's second report (0.6 s). The second kernel's watchdog
    sees the same blocked loop, but the step is not its own: one report at
    0.3 s, not one from each kernel naming the first's step."""
    seen = reports()
    again = threading.Event()
    seen.on_report = lambda record: "for 0.6 s" in record.getMessage() and again.set()

    def blocks(x):
        if x == 3:
            assert again.wait(10), "no second report came"
        return x

    async def slow_input():
        for i in range(30):
            yield i
            await asyncio.sleep(0.005)

    blocking = Dataflow("blocking")
    blocked = blocking.from_iterable(range(6)).map(blocks).collect()
    beside = Dataflow("beside")
    other = beside.from_async_iterable(slow_input()).collect()
    await asyncio.gather(run_async(blocking), run_async(beside))
    assert blocked.items == list(range(6)) and other.items == list(range(30))
    first = [m for m in _messages(seen) if "for 0.3 s" in m]
    assert first == [f"[kernel 0] from_iterable (step 0) {BLOCKED} for 0.3 s and is still running"], first


def _square(x):
    return x * x


@pytest.mark.skipif(sys.version_info < (3, 12), reason="Python 3.12+ warns at a fork with threads")
@pytest.mark.parametrize("times", [1, 3])
def test_a_step_that_forks_is_not_told_of_the_watchdogs_thread(times):
    """Python 3.12+ warns (DeprecationWarning) at a fork from a process with
    other threads, as a lock one holds stays held in the child. A step that
    forks (multiprocessing's default on Linux before 3.14) in a one-kernel
    run heard it of the watchdog's thread, which a run without the watchdog
    does not have: the watchdog now steps aside for the fork, and watches
    again after it (a step blocked later is still reported)."""

    def forks(x):
        for _ in range(times):
            with multiprocessing.get_context("fork").Pool(1) as pool:
                x = pool.apply(_square, (x,)) if x < 100 else x
        return x

    flow = Dataflow("forks")
    out = flow.from_iterable(range(3), batch_size=1).map(forks).collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(flow)
    expected = []
    for x in range(3):
        for _ in range(times):
            x = x * x if x < 100 else x
        expected.append(x)
    assert out.items == expected
    assert [str(w.message) for w in caught if "multi-threaded" in str(w.message)] == []
    assert _watchdog.running() == 0


def test_a_step_blocked_after_a_fork_is_still_reported(quick, reports):
    """The watchdog stepped aside for a step's fork comes back: the step
    blocks after forking and is reported once, naming it."""
    seen = reports()

    def forks_then_blocks(x):
        with multiprocessing.get_context("fork").Pool(1) as pool:
            x = pool.apply(_square, (x,))
        if x == 4:
            assert seen.arrived.wait(10), "no report came"
        return x

    flow = Dataflow("forks")
    out = flow.from_iterable(range(3), batch_size=1).map(forks_then_blocks).collect()
    run(flow)
    assert out.items == [0, 1, 4]
    assert _messages(seen) == [f"[kernel 0] from_iterable (step 0) {BLOCKED} for 0.3 s and is still running"]
    assert "in forks_then_blocks" in seen.records[0].getMessage()
