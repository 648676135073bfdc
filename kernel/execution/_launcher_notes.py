"""What a kernel process tells the process that started the run (the
launcher) beside its epochs and its results: a note `(kind, payload)` that
a handler the launcher's process registered for `kind` (`on_note`) takes.

Kernel 0 reads a live stream the launcher's process holds (a pipe, the
standard input) in a process of its own: what it reads is gone from the
stream for the launcher's later runs too, and the launcher did not know
(operators/_live_input.py). Sent as it happens, not with the results: a run
that fails has its kernels killed before they answer; what they told before
is read from their pipes after (`read_notes`).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable

_to_launcher = None  # a kernel process's connection to its launcher (`in_kernel_process`)
_handlers: dict[str, Callable[[object], None]] = {}


def in_kernel_process(conn) -> None:
    """In a kernel process: notes go on `conn`, the pipe of its answer."""
    global _to_launcher
    _to_launcher = conn


def tell_launcher(kind: str, payload) -> None:
    """In a kernel process, on its loop's thread (the pipe's one writer
    meanwhile): note `payload` to the launcher. Nothing in the launcher's
    own process (a run on one kernel)."""
    if _to_launcher is not None:
        _to_launcher.send(("note", (kind, payload)))


def on_note(kind: str, handler: Callable[[object], None]) -> None:
    """In the launcher's process: `handler(payload)` takes the notes of `kind`."""
    _handlers[kind] = handler


def noted(note: tuple) -> None:
    """In the launcher's process: a kernel's note, to its handler."""
    kind, payload = note
    handler = _handlers.get(kind)
    if handler is not None:
        handler(payload)


def read_notes(pipe) -> None:
    """What a kernel that has ended wrote on `pipe` and nobody read (a run
    that failed stopped reading at the first failure): its notes are taken,
    the rest dropped. Read without waiting: a message the kernel was
    killed in the middle of would wait for the rest for ever where another
    process holds a copy of the pipe's write end (see `_wait_for_results`)."""
    try:
        os.set_blocking(pipe.fileno(), False)
        while pipe.poll(0):
            message = pipe.recv_bytes()
            try:  # (another answer, e.g. a kernel's results whose objects do not load here:
                # dropped, as it was read only for the notes; raised, it hid the run's own error)
                status, payload = pickle.loads(message)
            except Exception:
                continue
            if status == "note":
                noted(payload)
    except (EOFError, OSError):
        pass
