"""The process's other threads get the GIL while a kernel runs in it
(kernel/scheduling/_handover.py); the thread beside `run()` is
tests/test_claims.py's "Other threads of your process". Each flow runs
until the thread has done its share (the `thread_beside_a_kernel`
fixture, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import threading
from types import SimpleNamespace

import pytest

from kernel import Kernel, VirtualClock, run_async


async def test_a_run_in_executor_call_finishes_while_a_kernel_runs_on_the_callers_loop(
        thread_beside_a_kernel):
    beside = thread_beside_a_kernel
    run_task = asyncio.create_task(run_async(beside.busy_flow()))
    await asyncio.sleep(0.05)  # the kernel busy first
    try:
        await asyncio.get_running_loop().run_in_executor(None, beside.ticks)
    finally:
        beside.done.set()
        await run_task
    beside.check()


async def test_a_thread_gets_its_turns_beside_a_kernel_fed_by_an_async_iterable(thread_beside_a_kernel):
    """The records come from an async generator: its reader runs on the
    loop between slices, holding the GIL, and a thread beside it got 3
    ticks a second when those gaps were taken for waits of the loop and no
    pause was made."""
    beside = thread_beside_a_kernel
    ticker = threading.Thread(target=beside.ticks)
    ticker.start()
    try:
        await run_async(beside.busy_flow(from_async=True))
    finally:
        beside.done.set()
        ticker.join()  # done: its ticks are over, or the flow's deadline passed
    beside.check()


class _Busy:
    """One activation a slice (each spends the whole 1 ms budget of the
    virtual clock) for `slices` slices, then lets the kernel end."""

    name = "busy"

    def __init__(self, kernel, clock, slices: int) -> None:
        self.kernel, self.clock, self.left = kernel, clock, slices

    def activate(self):
        self.clock.advance(0.001)
        self.left -= 1
        if self.left:
            self.kernel.ready(self)
        else:
            self.kernel.release()

    def start(self) -> None:
        self.kernel.hold()
        self.kernel.ready(self)


@pytest.fixture
def pauses(monkeypatch):
    """The handover on a VirtualClock, `pauses.clock`, instead of the real
    one: once a switch interval (5 ms) of it, the process has another
    thread, and a pause advances the clock by 0.1 ms instead of sleeping.
    `pauses.made` counts them; `pauses.gil = False` makes the build one
    without a GIL (3.13's free-threaded)."""
    from kernel.scheduling import _handover, _scheduler

    clock = VirtualClock()
    state = SimpleNamespace(clock=clock, made=0, gil=True)

    def pause(seconds):
        state.made += 1
        clock.advance(100e-6)

    monkeypatch.setattr(_handover, "time", SimpleNamespace(sleep=pause, monotonic=clock.monotonic))
    monkeypatch.setattr(_scheduler, "time", SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(_handover, "sys", SimpleNamespace(getswitchinterval=lambda: 0.005,
                                                          _is_gil_enabled=lambda: state.gil))
    monkeypatch.setattr(_handover, "threading", SimpleNamespace(active_count=lambda: 2))
    return state


async def test_a_pause_for_other_threads_is_not_taken_for_the_hosts_work(pauses):
    """A kernel busy for 20 slices with nothing else on the loop sits out no
    turn for the host, though it pauses once a switch interval: the pause
    made the gap between two slices look like the host's work (a turn sat
    out after each pause)."""
    kernel = Kernel(clock=pauses.clock)
    busy = _Busy(kernel, pauses.clock, 20)
    kernel.at_start(busy.start)
    await kernel.join()
    assert pauses.made >= 3
    assert kernel.statistics().slices == 20
    assert kernel.statistics().host_turns == 0


class _Records:
    """Records handed to a kernel that has nothing else to do, one at a time."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.ran = 0

    def activate(self):
        self.ran += 1

    name = "record"

    async def one(self) -> None:
        ran = self.ran
        self.kernel.ready(self)
        while self.ran == ran:
            await asyncio.sleep(0)


async def test_a_kernel_woken_after_a_switch_interval_idle_makes_no_pause(pauses):
    """A record that wakes a kernel idle for a switch interval or more (5
    ms) is not held up by a pause: the loop let the GIL go while it waited,
    or CPython's own switch came. Records closer together still pause once
    a switch interval: what ran between them may have held the GIL
    throughout (a `from_async_iterable` source's reader, a task of the
    loop). Each pause held a record up (~0.1 ms beside an idle thread, 5 ms
    and more beside one that computes); taking any gap of 0.1 ms for a wait
    of the loop stopped the pauses beside a `from_async_iterable` flow, and
    its neighbour thread starved again."""
    clock = pauses.clock
    kernel = Kernel(clock=clock)
    records = _Records(kernel)
    kernel.at_start(kernel.hold)
    joined = asyncio.create_task(kernel.join())
    await asyncio.sleep(0)
    for _ in range(5):
        clock.advance(0.010)  # the loop waits 10 ms for the next record
        await records.one()
    assert pauses.made == 0
    for _ in range(12):
        clock.advance(0.001)  # 1 ms of the host's work between two records
        await records.one()
    kernel.release()
    await joined
    assert pauses.made >= 2


@pytest.mark.parametrize("gil", [True, False])
async def test_a_build_without_a_gil_makes_no_pause(pauses, gil):
    """On 3.13's free-threaded build (`sys._is_gil_enabled()` False) no
    thread waits for a GIL, and a pause would only cost the kernel time."""
    pauses.gil = gil
    kernel = Kernel(clock=pauses.clock)
    busy = _Busy(kernel, pauses.clock, 20)
    kernel.at_start(busy.start)
    await kernel.join()
    assert (pauses.made >= 3) if gil else (pauses.made == 0)
