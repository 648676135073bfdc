"""Logs a kernel process sends to a queue that nobody reads there.

The logging cookbook's way for asyncio applications is a `QueueHandler` on
a `queue.Queue`, drained by a `QueueListener`'s thread into the real
handlers, so that no handler blocks the loop. A kernel process is forked
without that thread: what its steps and the kernel logged (warnings,
stalls, the watchdog's reports, errors) went into its copy of the queue and
was never written. A run of two kernels logged nothing at all, where one
kernel (in the caller's process, the listener alive) logged everything.

So a kernel process, as it starts, has each such handler hand its records
straight to its listener's handlers (`QueueListener.handle`, which keeps
the listener's `respect_handler_level`): written in the kernel, as the
handlers of a logger without a queue are. A queue that crosses processes (a
`multiprocessing` queue) is left alone: its listener, in the caller, reads
it. A handler whose listener is not found (a thread of the application's
own drains the queue) is left alone too. The listeners are found in the
launcher, before it forks (`find_before_fork`): looking through the heap
in each kernel would write every object's reference count there, copying
every page of the caller's heap a kernel inherits; they are found through
the process's threads, each running its listener's `_monitor`.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import threading

_found: list = []  # (QueueHandler, its listener) pairs the launcher found, inherited by its kernels


def find_before_fork() -> None:
    """In the launcher, before it forks a run's kernels: each `QueueHandler`
    on a thread queue whose listener runs in this process, with that
    listener."""
    global _found
    handlers = [h for h in _all_handlers() if isinstance(h, logging.handlers.QueueHandler)
                and isinstance(h.queue, (queue.Queue, queue.SimpleQueue))]
    pairs = []
    listeners = _running_listeners() if handlers else []
    for handler in handlers:
        listener = getattr(handler, "listener", None)  # set by dictConfig from 3.12
        if listener is None:
            listener = next((found for found in listeners if found.queue is handler.queue), None)
        thread = getattr(listener, "_thread", None)
        if listener is not None and thread is not None and thread.is_alive():
            pairs.append((handler, listener))
    _found = pairs


def _running_listeners() -> list:
    """The QueueListeners whose threads run in this process: each thread's
    target is its listener's `_monitor` (found through the threads, a few,
    not the heap: a scan of a heap of 2,000,000 objects took ~200 ms)."""
    found = []
    for thread in threading.enumerate():
        owner = getattr(getattr(thread, "_target", None), "__self__", None)
        if isinstance(owner, logging.handlers.QueueListener):
            found.append(owner)
    return found


def emit_queued_logs_here() -> None:
    """In a kernel process, just forked: route the records of each handler
    the launcher found to its listener's handlers (its thread is the
    launcher's, not here)."""
    for handler, listener in _found:
        handler.enqueue = listener.handle


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
    return [handler for logger in loggers for handler in logger.handlers]


def shut_logging_down_at_exit() -> None:
    """In a kernel process, just forked, the caller's exit handlers cleared
    (`logging.shutdown` among them): at the kernel's exit, what
    `logging.shutdown` does at an interpreter's, for the kernel's own: the
    handlers made in the kernel (a pipeline file's, each kernel importing
    it) are flushed and closed, and the inherited buffering ones (a
    `MemoryHandler`) flushed. Their copies of what the caller held as the
    kernel forked are emptied first: the caller writes those. Before, a
    `MemoryHandler` wrote nothing of what two kernels logged."""
    inherited = list(logging._handlerList)  # weak references, kept so that their ids stay theirs
    for ref in inherited:
        handler = ref()
        if isinstance(handler, logging.handlers.BufferingHandler):
            handler.buffer = []
    atexit.register(_shut_down, inherited)


def _shut_down(inherited: list) -> None:
    for ref in inherited:
        handler = ref()
        try:
            if isinstance(handler, logging.handlers.BufferingHandler):
                handler.flush()
            elif isinstance(handler, logging.handlers.QueueHandler) and hasattr(handler.queue, "join_thread"):
                # a multiprocessing queue: its feeder thread (a daemon, started by the kernel's
                # first record) writes to the pipe after put() returns; the last records went
                # down with the kernel (1 of 6 in CI, beside a whole suite)
                handler.queue.close()
                handler.queue.join_thread()
        except Exception:  # (as logging.shutdown: a handler's error does not stop the others)
            pass
    kept = {id(ref) for ref in inherited}
    logging.shutdown([ref for ref in logging._handlerList if id(ref) not in kept])
