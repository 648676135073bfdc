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
own drains the queue) is left alone too.
"""

from __future__ import annotations

import gc
import logging
import logging.handlers
import queue


def emit_queued_logs_here() -> None:
    """In a kernel process, just forked: route the records of every
    `QueueHandler` on a thread queue whose listener's thread was the
    parent's to that listener's handlers."""
    handlers = [h for h in _all_handlers() if isinstance(h, logging.handlers.QueueHandler)
                and isinstance(h.queue, (queue.Queue, queue.SimpleQueue))]
    if not handlers:
        return
    listeners = _listeners()
    for handler in handlers:
        listener = getattr(handler, "listener", None)  # set by dictConfig from 3.12
        if listener is None:
            listener = next((found for found in listeners if found.queue is handler.queue), None)
        thread = getattr(listener, "_thread", None)
        if listener is not None and thread is not None and not thread.is_alive():  # the parent's
            handler.enqueue = listener.handle


def _all_handlers() -> list[logging.Handler]:
    loggers = [logging.getLogger()] + [logger for logger in logging.Logger.manager.loggerDict.values()
                                       if isinstance(logger, logging.Logger)]
    return [handler for logger in loggers for handler in logger.handlers]


def _listeners() -> list[logging.handlers.QueueListener]:
    # (the whole heap, once, and only where a QueueHandler on a thread queue exists)
    return [found for found in gc.get_objects() if isinstance(found, logging.handlers.QueueListener)]
