"""The library's own threads leave the stopping signals to the main thread.

Python runs a signal's handler only in the main thread, but the operating
system hands a signal sent to the process (Ctrl-C's SIGINT, a supervisor's
SIGTERM) to any thread that does not block it. One handed to another
thread (the watchdog's, the dashboard's) only flags it: the main thread,
blocked in a step's `time.sleep(60)` or a socket read, is not interrupted,
and the first Ctrl-C, which stops a blocked step (`_interrupt.py`), waited
for the call to return (seen under load: the run blocked in a timer went on
past the test's 8 s). A thread started inside `main_thread_signals()`
blocks them (a new thread takes its starter's mask), so they go to the
main thread, which the kernel's loop runs in.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager

STOPPING = frozenset({signal.SIGINT, signal.SIGTERM})


@contextmanager
def main_thread_signals():
    """Around starting a thread of the library's: it blocks STOPPING."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)
    try:
        yield
    finally:
        # (one that came meanwhile, pending, is handed to this thread now)
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
