"""Adversarial review: the shared-memory rings (net/shm.py) and the kernel's
timers (kernel/scheduling/_kernel.py, _clock.py). Each test fails on the
code as reviewed."""

from __future__ import annotations

import asyncio
import math

import pytest
from kernel.net.shm import RingClosed, SpscRing

from kernel.scheduling._clock import VirtualClock
from kernel.scheduling._kernel import Kernel


def _run_task(kernel, task) -> None:
    """`task()` spawned on `kernel`, joined, in a loop of its own."""
    async def main():
        kernel.spawn(task())
        await kernel.join()

    asyncio.run(main())

def test_push_after_close_raises_ring_closed_for_small_frames():
    # A large frame pushed after close() raises RingClosed (the general
    # path checks `_closed`); a small one takes push2/push_tagged's fast
    # path, which never looks, and fails on the released memoryview with a
    # bare TypeError ("argument must be read-write bytes-like object").
    ring = SpscRing.create_inherited(64)
    ring.close()
    with pytest.raises(RingClosed):
        ring.push(b"x" * 100)  # the general path: as it should be
    with pytest.raises(RingClosed):
        ring.push(b"x")
    with pytest.raises(RingClosed):
        ring.push_tagged(1, 2, b"a")


def test_virtual_timer_cancelled_once_due_does_not_fire():
    # With the system clock, cancel() on a call_later handle before its
    # callback ran stops it (asyncio's TimerHandle). With a VirtualClock,
    # advance() past the deadline has already moved the callback onto the
    # loop (loop.call_soon(fn)), and the handle's cancel() only clears the
    # heap entry that is gone: the cancelled timer fires anyway.
    clock = VirtualClock()
    kernel = Kernel(clock=clock)
    fired: list[str] = []

    async def task():
        handle = kernel.call_later(1.0, lambda: fired.append("fired"))
        clock.advance(1.0)
        handle.cancel()
        for _ in range(3):
            await asyncio.sleep(0)

    _run_task(kernel, task)
    assert fired == [], "a timer cancelled before its callback ran still fired"


def test_nan_delay_does_not_block_other_timers():
    # call_later(nan) is accepted; on a VirtualClock its heap entry has a
    # NaN deadline, `nan <= now` is False for ever, and advance() stops at
    # the top of the heap: every other timer of the kernel never fires.
    # Either refuse the delay (ValueError) or keep the other timers going.
    clock = VirtualClock()
    kernel = Kernel(clock=clock)
    fired: list[str] = []

    async def task():
        try:
            kernel.call_later(math.nan, lambda: fired.append("nan"))
        except ValueError:
            pass  # refused: also right
        kernel.call_later(1.0, lambda: fired.append("one"))
        clock.advance(5.0)
        for _ in range(3):
            await asyncio.sleep(0)

    _run_task(kernel, task)
    assert "one" in fired, "a NaN-delay timer kept a due timer from firing"


def test_a_named_ring_on_a_full_shm_fails_with_an_error_not_sigbus(tmp_path):
    # SpscRing.create (public: kernel.net.SpscRing) sizes its segment with
    # ftruncate alone, which on tmpfs reserves nothing: on a /dev/shm too
    # small for the ring (64 MB in a container by default) create()
    # succeeds and the first push that touches a page past the limit kills
    # the process with SIGBUS, mid-run. Reserving the pages at creation
    # (os.posix_fallocate) would refuse the ring with an OSError instead.
    import os
    import signal
    import subprocess

    from kernel.net import shm

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    small = tmp_path / "shm"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        pid = os.fork()
        if pid == 0:  # the child: a ring 16 times the room there is, filled
            code = 0
            try:
                shm._SHM_DIR = str(small)
                try:
                    ring = shm.SpscRing.create(1 << 20)
                except OSError:
                    os._exit(3)  # refused with an error: right
                chunk = b"x" * 4000
                while ring.push(chunk):
                    pass
                code = 4  # filled it (no limit hit?)
            except BaseException:
                code = 5
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGBUS), (
            "the process writing a named ring on a full tmpfs died of SIGBUS")
    finally:
        for leftover in small.iterdir():
            leftover.unlink()
        subprocess.run(["umount", str(small)], capture_output=True)


def test_a_base_exception_in_a_start_hook_stops_the_kernels_tasks():
    # join() promises: it raises the first failure and "the kernel then
    # stops its scheduler and cancels its remaining tasks, so nothing keeps
    # running after a failure". An at_start hook (runtime.start: operators'
    # open()) that raises a BaseException that is no Exception (a
    # `class Stop(BaseException)`, as the timer path already handles) goes
    # past join's `except Exception`: join raises it, but fail() is never
    # called, kernel.failed is False, and the tasks spawned go on running
    # on the host's loop.
    class Stop(BaseException):
        pass

    ticks: list[int] = []

    async def main():
        kernel = Kernel()

        async def worker():
            while True:
                ticks.append(1)
                await asyncio.sleep(0.001)

        kernel.spawn(worker())

        def boom():
            raise Stop("from a start hook")

        kernel.at_start(boom)
        with pytest.raises(Stop):
            await kernel.join()
        before = len(ticks)
        await asyncio.sleep(0.03)
        return kernel, len(ticks) - before

    kernel, ticks_after = asyncio.run(main())
    assert ticks_after == 0, f"a task of the failed kernel ran {ticks_after} more times after join() raised"
    assert kernel.failed
