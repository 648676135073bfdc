"""Handing work from another thread to a kernel's loop."""

from __future__ import annotations

import asyncio


def call_soon_from_thread(loop: asyncio.AbstractEventLoop, fn, *args) -> bool:
    """`loop.call_soon_threadsafe(fn, *args)`, or False if the loop has
    closed meanwhile: a thread that outlives its run (a snapshot writer
    finishing, a message arriving as the run ends) then has nobody left to
    tell, and says nothing, rather than printing `RuntimeError: Event loop
    is closed` from the thread after the run ended."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        if not loop.is_closed():
            raise
        return False
    return True
