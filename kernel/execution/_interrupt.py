"""A first Ctrl-C that stops a blocking one-kernel run at once.

`run(flow)` runs its kernel under asyncio's Runner (`uvloop.run`), whose
SIGINT handler only cancels the run's main task on a first Ctrl-C: the
cancellation lands at the task's next await, so a step blocked in its
function (`time.sleep`, a lock, a socket read) or a slice that would not
end went on, and only a second Ctrl-C stopped the run. On several cores
the launcher gets its `KeyboardInterrupt` at once.

While the kernel runs, the Runner's handler is wrapped: a SIGINT that comes
while the loop's thread is in the kernel's work (a slice's activation, one
of its tasks or `call_later` timers, its steps' open() as it starts: what
the watchdog calls blocked, `Kernel._blocked_in`; or its steps' result()
once it has ended, `Runtime.results`) raises
`KeyboardInterrupt` there, as Python's own handler does in a plain program,
and the run raises it as for a `KeyboardInterrupt` in a step's function
(see "When a function raises"). A SIGINT while the loop waits goes to the
Runner's handler, as before (its cancellation is prompt then). A handler
of the caller's own, or SIGINT ignored, is left alone, and so is a run off
the main thread (only the main thread gets signals).
"""

from __future__ import annotations

import asyncio
import functools
import signal
import threading
from contextlib import contextmanager

from kernel.runtime._runtime import Runtime

from ._supervisor import Terminated

# its frame on the loop's thread: the steps' result() after the run (a user's,
# that may block: a first Ctrl-C only cancelled the run once it returned)
_RESULTS = Runtime.results.__code__


def _runners(handler) -> bool:
    """Whether `handler` is asyncio.Runner's (installed for this run, as the
    caller's was Python's default)."""
    return (isinstance(handler, functools.partial)
            and getattr(handler.func, "__func__", None) is asyncio.Runner._on_sigint)


def _in_results(frames: list, runtime) -> bool:
    return runtime is not None and any(
        frame.f_code is _RESULTS and frame.f_locals.get("self") is runtime for frame in frames)


@contextmanager
def sigint_handler_kept():
    """Around the Runner: the SIGINT handler the caller had is its handler
    again after the run. (A KeyboardInterrupt raised in a kernel task
    leaves the loop before the run's coroutine ends: the Runner, finding
    our handler, left it, and ours then put the Runner's back, which stayed
    the process's handler after the run.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        after = signal.getsignal(signal.SIGINT)
        # (only the Runner's or ours: one a step or a debugger set meanwhile is theirs)
        if after is not before and (_runners(after) or getattr(after, "wraps_runners", False)):
            signal.signal(signal.SIGINT, before)


@contextmanager
def first_ctrl_c_interrupts(kernel, runtime=None):
    """While it lasts, a SIGINT in `kernel`'s work (or in `runtime`'s
    `results()`) raises KeyboardInterrupt there; any other goes to asyncio's
    Runner's handler (the module's docstring). Only where that handler is
    the Runner's. Gives the list of the signals it passed on to the
    Runner (whose cancellation they caused: `SIGTERM` where `python -m
    kernel.run`'s handler passed that on as its Ctrl-C)."""
    passed_on: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield passed_on
        return
    runners = signal.getsignal(signal.SIGINT)
    if not _runners(runners):
        yield passed_on
        return

    def on_sigint(signum, frame):
        frames = []
        inner = frame
        while inner is not None:
            frames.append(inner)
            inner = inner.f_back
        if kernel._blocked_in(frames) is not None or _in_results(frames, runtime):
            # (the command line's SIGTERM, passed on as a Ctrl-C, is raised as what it is)
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        passed_on.append(signum)
        runners(signum, frame)

    on_sigint.wraps_runners = True  # type: ignore[attr-defined]
    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield passed_on
    finally:
        if signal.getsignal(signal.SIGINT) is on_sigint:  # (put back for the Runner to take down)
            signal.signal(signal.SIGINT, runners)
