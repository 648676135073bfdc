"""`run_async(flow, state_dir=...)`: the store's set-up (created, read,
checked and claimed: SQLite and fsync) ran on the host's loop, holding it
0.04-0.3 s a run (an embedding application's timers came late, its I/O
waited), and for as long as another connection held the store's write
lock. It runs on a thread now: the host's loop ticks meanwhile; cancelled
meanwhile, the run waits for the set-up and closes its store, and the
state_dir serves the next run."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest

from kernel import Dataflow, run_async

_TICKS = 5  # host ticks seen while the set-up waits for the store's lock
_DEADLINE = 3.0  # seconds: the lock is let go of then whatever (a loop held sees no tick)


def _flow():
    flow = Dataflow("numbers")
    out = flow.from_iterable(range(100), name="numbers in").collect()
    return flow, out


async def _ticks_while_the_store_is_locked(state, cancel: bool) -> tuple[int, list]:
    """A run over `state` while another connection holds its store's write
    lock, let go of once the host's loop has ticked _TICKS times (or after
    _DEADLINE; `cancel`: once the run, waiting for it, is cancelled): the
    ticks seen before; the run's results (cancelled: none)."""
    locker = sqlite3.connect(state / "snapshots.sqlite", isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN EXCLUSIVE")
    ticked, enough = [], threading.Event()

    def let_go() -> None:
        enough.wait(_DEADLINE)
        locker.execute("COMMIT")
        locker.close()

    releaser = threading.Thread(target=let_go)
    releaser.start()

    async def ticks() -> None:
        while True:
            await asyncio.sleep(0.001)
            ticked.append(None)
            if len(ticked) >= _TICKS and not cancel:
                enough.set()

    ticking = asyncio.create_task(ticks())
    flow, out = _flow()
    running = asyncio.create_task(run_async(flow, state_dir=state))
    try:
        if cancel:
            while len(ticked) < _TICKS and not running.done():
                await asyncio.sleep(0.001)
            seen = len(ticked)
            running.cancel()  # (its set-up waits for the lock: the run waits for it, then ends)
            await asyncio.sleep(0.01)
            enough.set()
            with pytest.raises(asyncio.CancelledError):
                await running
            return seen, []
        await running
        return len(ticked), out.items
    finally:
        ticking.cancel()
        enough.set()
        await asyncio.to_thread(releaser.join)


def test_the_host_s_loop_ticks_while_a_state_dir_s_store_is_set_up(tmp_path):
    flow, _out = _flow()
    asyncio.run(run_async(flow, state_dir=tmp_path))  # (the store, made: the next run opens and claims it)
    ticks, items = asyncio.run(_ticks_while_the_store_is_locked(tmp_path, cancel=False))
    assert ticks >= _TICKS
    assert items == []  # (its last epoch was complete: resumed as ended)


def test_a_run_cancelled_while_its_state_dir_is_set_up_leaves_it_to_the_next(tmp_path):
    flow, _out = _flow()
    asyncio.run(run_async(flow, state_dir=tmp_path / "first"))
    ticks, _ = asyncio.run(_ticks_while_the_store_is_locked(tmp_path / "first", cancel=True))
    assert ticks >= _TICKS
    again, out = _flow()
    asyncio.run(run_async(again, state_dir=tmp_path / "first"))  # (not "held by another run")
    assert out.items == []
