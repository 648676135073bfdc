"""When this process was last continued (SIGCONT) after a stop.

A kernel process stopped by SIGSTOP or job control (Ctrl-Z and `fg` on a
whole `python -m kernel.run`) mid-activation came back reporting a stall
of the operator it had been running, as long as the stop ("stall: forever
(step 0) ran 3012.3 ms without yielding"): no fault of that operator's.
The stall detector asks `continued_within` before it reports one. Only a
kernel process notes its continues (`note_continues`, kernel/execution):
a process that runs a kernel on its own thread keeps its signal handlers.
A debugger resumes a process without SIGCONT: not seen here.
"""

from __future__ import annotations

import signal
import time

_continued_at = float("-inf")  # time.monotonic() at the last SIGCONT


def _on_continue(_signum, _frame) -> None:
    global _continued_at
    _continued_at = time.monotonic()


def note_continues() -> None:
    """Note every SIGCONT from now on (in this process's main thread).
    System calls it interrupts are restarted (SA_RESTART): C code running
    when it comes need not handle EINTR."""
    signal.signal(signal.SIGCONT, _on_continue)
    signal.siginterrupt(signal.SIGCONT, False)


def continued_within(seconds: float) -> bool:
    """Was this process continued in the last `seconds` (real time)?"""
    return time.monotonic() - _continued_at <= seconds
