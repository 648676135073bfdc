"""The process's other threads get the GIL while a kernel runs in it
(kernel/scheduling/_handover.py); the thread beside `run()` is
tests/test_claims.py's "Other threads of your process". Each flow runs
until the thread has done its share (the `thread_beside_a_kernel`
fixture, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import time
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
    """The handover looks before every slice (a switch interval of 0) and
    finds another thread in the process every other time (every time with
    `pauses.every_other = False`), on a build with a GIL (without one with
    `pauses.gil = False`, as 3.13's free-threaded); a pause advances `pauses.clock`, a
    VirtualClock, by 0.1 ms instead of sleeping. `pauses.made` counts them."""
    from kernel.scheduling import _handover

    state = SimpleNamespace(clock=VirtualClock(), made=0, looks=0, every_other=True, gil=True)

    def pause(seconds):
        state.made += 1
        state.clock.advance(100e-6)

    def active_count():
        state.looks += 1
        return 1 + state.looks % 2 if state.every_other else 2

    monkeypatch.setattr(_handover, "time", SimpleNamespace(sleep=pause, monotonic=time.monotonic))
    monkeypatch.setattr(_handover, "sys", SimpleNamespace(getswitchinterval=lambda: 0.0,
                                                          _is_gil_enabled=lambda: state.gil))
    monkeypatch.setattr(_handover, "threading", SimpleNamespace(active_count=active_count))
    return state


async def test_a_pause_for_other_threads_is_not_taken_for_the_hosts_work(pauses):
    """A kernel busy for 20 slices with nothing else on the loop sits out no
    turn for the host, though it pauses before every other slice: the pause
    made the gap between two slices look like the host's work (a turn sat
    out at each pause)."""
    kernel = Kernel(clock=pauses.clock)
    busy = _Busy(kernel, pauses.clock, 20)
    kernel.at_start(busy.start)
    await kernel.join()
    assert pauses.made >= 9
    assert kernel.statistics().slices == 20
    assert kernel.statistics().host_turns == 0


async def test_a_kernel_woken_after_a_wait_of_the_loop_makes_no_pause(pauses):
    """A record that wakes an idle kernel is not held up by a pause: the
    loop let the GIL go while it waited (one that wakes it 0.1 ms or more
    after its last slice; its first slice too). Records that follow one
    another closer than that still pause (the loop's polls between them are
    too brief for a waiting thread). Each pause held a record up (~0.1 ms
    beside an idle thread, more than 5 ms beside one that computes)."""
    pauses.every_other = False
    clock = pauses.clock
    kernel = Kernel(clock=clock)
    ran = []

    class Record:
        def __init__(self, n):
            self.name = f"record {n}"

        def activate(self):
            ran.append(self.name)

    kernel.at_start(kernel.hold)
    joined = asyncio.create_task(kernel.join())
    await asyncio.sleep(0)
    for n in range(5):
        clock.advance(0.010)  # the loop waits 10 ms for the next record
        kernel.ready(Record(n))
        while len(ran) <= n:
            await asyncio.sleep(0)
    assert pauses.made == 0
    for n in range(5, 10):  # one at once after another: the loop did not wait
        kernel.ready(Record(n))
        while len(ran) <= n:
            await asyncio.sleep(0)
    kernel.release()
    await joined
    assert pauses.made >= 4


@pytest.mark.parametrize("gil", [True, False])
async def test_a_build_without_a_gil_makes_no_pause(pauses, gil):
    """On 3.13's free-threaded build (`sys._is_gil_enabled()` False) no
    thread waits for a GIL, and a pause would only cost the kernel time."""
    pauses.every_other = False
    pauses.gil = gil
    kernel = Kernel(clock=pauses.clock)
    busy = _Busy(kernel, pauses.clock, 10)
    kernel.at_start(busy.start)
    await kernel.join()
    assert pauses.made == (9 if gil else 0)  # (not before the first slice: the kernel was idle)
