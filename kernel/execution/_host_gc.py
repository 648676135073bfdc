"""The host's heap while a kernel shares its process (`run_async` on one core).

A kernel on the caller's loop allocates batches and records by the million,
and CPython's collector counts those allocations: every so often they
trigger a full collection, which walks every object of the process, the
host application's included. In an aiohttp server holding its app, its
modules and a few caches, one took 35-60 ms (benches/embedded.py, at the
default thresholds): the whole loop waited, requests and kernel alike, and
the budget meant nothing.

So while such a run lasts, the heap as it was when the run began is frozen
(`gc.freeze()`: moved aside, out of every collection) and unfrozen when the
last run ends. Collections then walk only what was made since: young
collections as before (the collector's thresholds are left as they are,
so the host's own garbage goes as promptly as ever), full ones over the
run's objects and the host's newer ones, not the whole process. The cost:
an object that was alive when the run began and becomes garbage in a cycle
during it is collected after the run ends, not before (at most what was
alive at the start, whatever the run's length).

Left alone: a process with frozen objects already (more than the
interpreter's own when `kernel` was imported: Python 3.12 keeps the
immortal objects its collector finds frozen; the host freezes its
heap itself, say before forking workers), or with the collector disabled
(`gc.disable()`): the host has chosen, and unfreezing at the end would undo
its choice. Runs that overlap (two pipelines on one loop) share one freeze,
undone when the last of them ends.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager

from kernel._interpreter_gc import INTERPRETER_FROZEN

_runs = 0  # runs under way that share the freeze
_frozen = False  # whether this module froze the heap (and so unfreezes it)


@contextmanager
def host_heap_frozen():
    """Freeze the heap as it is for the duration (see the module docstring)."""
    global _runs, _frozen
    if _runs == 0 and gc.isenabled() and gc.get_freeze_count() <= INTERPRETER_FROZEN:
        gc.freeze()
        _frozen = True
    _runs += 1
    try:
        yield
    finally:
        _runs -= 1
        if _runs == 0 and _frozen:
            _frozen = False
            gc.unfreeze()
