"""Handing the GIL to the process's other threads while a kernel is busy.

A busy kernel's loop polls for I/O between slices (every ~1 ms). The poll
lets go of the GIL and takes it back a microsecond later, before a thread
waiting for it has woken up, and CPython's forced switch never comes: a
waiting thread asks the holder to let go only when the GIL has not changed
hands for a whole switch interval (5 ms), and each poll counts as a change.
So another thread of the process (a ticker, a `run_in_executor` worker, a
web framework's thread) got 3-5 of its hundred 10 ms ticks a second while
one kernel ran in it on an otherwise idle machine (on a loaded one it got
40-95: its waiting thread wakes sooner), where a plain Python loop leaves it ~65.

So once a switch interval (`sys.getswitchinterval()`), while the process
has another thread, the scheduler sleeps a moment before its next slice: a
real release of the GIL, long enough for a waiting thread to wake and take
it; that thread then runs until CPython's own switch hands the GIL back.
A pause costs ~0.1 ms, ~2% of a busy kernel's time while other threads
exist even when they wait for nothing (a thread pool's idle workers), more
on a loaded machine; a process with no other thread pays one clock read a
slice. A thread that computes keeps the GIL for a switch interval each
time: beside one, a busy kernel runs at about half its rate, as a plain
Python loop does (~95% without the pauses, the thread starving; ~25% on a
loaded machine, where the thread also wins some of the polls).
Time is the real monotonic clock, not the kernel's (a `VirtualClock` does
not move).

No pause in a slice that wakes a kernel idle for a switch interval or more
(the last slice left nothing to run, and that long went by since on the
kernel's clock), nor in a kernel's first slice: the loop let go of the GIL
while it waited, as a pause would have, or CPython's own switch came; and a
record that wakes an idle kernel is not held up by a pause (~0.1 ms beside
an idle thread; beside a thread that computes, more than a switch
interval: that thread keeps the GIL until CPython's switch hands it back).
A shorter gap need not be a wait: a `from_async_iterable` source's reader
is a task of the loop that runs between slices, the GIL held throughout
(with 0.1 ms taken for a wait, the pauses stopped and a thread beside
such a flow starved again: 3 ticks a second).

Nor on a build without a GIL (3.13's free-threaded one, unless an
extension module has turned the GIL back on): no thread waits for it.
"""

from __future__ import annotations

import sys
import threading
import time

# seconds asked for; Linux's timer slack (50 us) makes a pause ~90 us (p50 88 us, p99
# 130 us on an idle 2-CPU machine; ms at times on a loaded one), time enough for a waiting
# thread to wake (tens of us) and take the GIL
_PAUSE = 20e-6


def _gil_enabled() -> bool:
    is_enabled = getattr(sys, "_is_gil_enabled", None)  # 3.13 and later
    return is_enabled is None or is_enabled()


class Handover:
    """When the GIL is next let go for the process's other threads."""

    __slots__ = ("due", "interval")

    def __init__(self) -> None:
        self.due = 0.0  # on time.monotonic(): when to look again
        self.interval = sys.getswitchinterval()  # as last read: an idle gap this long needs no pause

    def hand_over(self, now: float, idle: bool = False) -> bool:
        """Let the GIL go for a moment if another thread may want it, unless
        the kernel was `idle` (the loop has just waited, the GIL let go);
        `now` is `time.monotonic()`, read by the caller to compare with
        `due`. True if it paused."""
        # (the kernels' watchdog thread is not threading's: _watchdog.py)
        paused = not idle and threading.active_count() > 1 and _gil_enabled()
        if paused:
            time.sleep(_PAUSE)
            now = time.monotonic()
        self.interval = interval = sys.getswitchinterval()
        self.due = now + interval
        return paused
