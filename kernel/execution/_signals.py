"""Ctrl-C and SIGTERM held back while a kernel process is forked.

A SIGINT handled between the fork of a kernel and its entry in the
launcher's books raised KeyboardInterrupt there: that kernel, forked but in
no list, was neither killed nor joined, and ran on after the caller had its
KeyboardInterrupt (for ever, for a stream; under `python -m kernel.run`
until the launcher's exit killed it, PR_SET_PDEATHSIG). Raised in the
launcher's at-fork hooks (logging's runs after every fork), it was printed
("Exception ignored in ...") and swallowed by CPython: the Ctrl-C was lost
and the run went on. A kernel forked with the launcher's handlers took a
terminal's Ctrl-C too, before it had set its own: a KeyboardInterrupt in
its at-fork hooks, printed and swallowed, and the kernel ran on.

So, for each fork (`held_signals`):

* SIGINT and SIGTERM are blocked in the forking thread. The kernel is born
  with them blocked and takes them only once it has set its own handlers
  (`release_in_kernel`: SIGINT ignored, SIGTERM its default action).
* In the main thread, their Python handlers are replaced by one that only
  notes the signal. Blocking alone is not enough: a signal sent to the
  process goes to any thread that does not block it, and CPython then runs
  the Python handler in the main thread, in the window all the same.
  Once the kernel is in the books, the handlers are put back and each noted
  signal is handed to its own (the KeyboardInterrupt is raised then, and
  the kernel is stopped with the others).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def held_signals():
    """Hold SIGINT and SIGTERM back for the duration (see the module's docstring)."""
    noted: list = []
    replaced: dict = {}

    def note(signum, frame) -> None:
        noted.append((signum, frame))

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        if threading.current_thread() is threading.main_thread():  # (signal.signal works there only)
            for sig in HELD:
                handler = signal.getsignal(sig)
                if callable(handler):  # SIG_DFL or SIG_IGN: nothing runs in the window
                    replaced[sig] = handler
                    signal.signal(sig, note)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # one that came meanwhile is noted now
        # SIGINT's last: the CLI's SIGTERM handler hands over to SIGINT's,
        # which must still be `note` until SIGTERM's own is back
        for sig in sorted(replaced, key=lambda sig: sig == signal.SIGINT):
            signal.signal(sig, replaced[sig])
        for signum, frame in noted:
            replaced[signum](signum, frame)


def release_in_kernel() -> None:
    """In a kernel just forked, its own handlers set: take the signals
    `held_signals` blocked (a pending SIGINT is dropped: ignored; a pending
    SIGTERM ends the kernel)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)
