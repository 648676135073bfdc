"""Found by a review of live streams (operators/_live_input.py): a reader
taken over by the next run over a stream must go on looking for what its
thread reads."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
from _live_streams import DEADLINE

from kernel import Dataflow, run, run_async
from operators import _live_input


async def _fails_soon():
    # (long enough for the live source to fall idle, a look of its pending)
    await asyncio.sleep(0.15)
    raise ValueError("the run fails here")
    yield  # (an async generator)


def test_a_reader_taken_over_after_a_run_failed_while_its_source_idled_still_looks_for_lines():
    """The first run fails while its live source idles on an empty pipe, a
    look of it pending (`_looking`) on that run's loop, which never ran it:
    the next run took the reader over with `_looking` still set, so its
    source never looked again, and lines a chunk held (a burst, then the
    writer waiting for the answer to its line) waited for the chunk's end:
    an exchange waited for ever. Now each run's start clears it."""
    unanswered: list[str] = []
    answered = threading.Event()
    handed_on: list[str] = []

    def answer(line: str) -> str:
        handed_on.append(line)
        if line.startswith("ping"):
            answered.set()
        return line

    read, write = os.pipe()
    with os.fdopen(read) as stream, os.fdopen(write, "w") as out:
        first = Dataflow("first")
        first.from_iterable(stream).union(first.from_async_iterable(_fails_soon)).collect()
        with pytest.raises(Exception, match="the run fails here"):
            run(first)

        def writer() -> None:
            try:
                out.write("".join(f"{i}\n" for i in range(20_000)))  # (the reader's chunks grow)
                out.flush()
                for k in range(3):
                    answered.clear()
                    out.write(f"ping{k}\n")
                    out.flush()
                    if not answered.wait(DEADLINE):
                        unanswered.append(f"ping{k}")
                        return
            finally:
                out.close()  # (the run ends: a failing test does not hang)

        second = Dataflow("second")
        second.from_iterable(stream).map(answer).collect()
        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        run(second)
        thread.join(DEADLINE)
    assert not unanswered, f"no answer to {unanswered} within {DEADLINE} s ({len(handed_on)} handed on)"
    assert len(handed_on) == 20_003


async def _fails_at_once():
    await asyncio.sleep(0.01)  # (the live sources have started reading)
    raise ValueError("the run fails here")
    yield  # (an async generator)


def test_runs_ending_early_over_one_stream_leave_one_entry_of_its_reader():
    """Each run over a stream that ended early left the reader (taken over
    by the next) its entry in `_reading`, by the id of a kernel gone: one
    more a run, for as long as the stream was read. Now a reader taken
    over has only its current run's entry; and no line is lost."""
    runs, lines = 5, 200
    handed_on: list[int] = []

    def seen(line: str) -> str:
        handed_on.append(int(line))
        return line

    read, write = os.pipe()
    with os.fdopen(read) as stream, os.fdopen(write, "w") as out:
        for at in range(runs):
            out.write("".join(f"{i}\n" for i in range(at * lines, (at + 1) * lines)))
            out.flush()
            flow = Dataflow(f"run {at}")
            one, other = flow.from_iterable(stream).map(seen), flow.from_iterable(stream).map(seen)
            one.union(other, flow.from_async_iterable(_fails_at_once)).collect()
            with pytest.raises(Exception, match="the run fails here"):
                run(flow)
        left = [reader for reader in _live_input._left_over.values() if reader._iterator() is stream]
        assert len(left) == 1
        entries = [key for key, reader in list(_live_input._reading.items()) if reader is left[0]]
        assert len(entries) == 1, f"{len(entries)} entries of the reader after {runs} runs"
        out.close()
        last = Dataflow("last")
        rest = last.from_iterable(stream).map(int).collect()
        run(last)
    assert sorted(handed_on + rest.items) == list(range(runs * lines))


def test_a_look_left_by_the_run_before_on_the_same_loop_starts_no_second_chain_of_looks(monkeypatch):
    """run_async twice on one loop, the first run failing while its live
    source idled, a look of its pending: that look came in the second run,
    whose own looks had started (each run's start clears `_looking`), and
    from then on each woke the source to set another: two chains of looks,
    20 a second on an idle stream where the README says 10 at most. Each
    look after another is at least `_LAST_LOOK` later in one chain."""
    looks: list[float] = []
    enough = 8
    look_again = _live_input.LiveReader._look_again

    def counted(self, *args):
        looks.append(time.monotonic())
        return look_again(self, *args)

    monkeypatch.setattr(_live_input.LiveReader, "_look_again", counted)
    read, write = os.pipe()

    async def ends_after_looks():
        deadline = time.monotonic() + DEADLINE
        while len(looks) < enough and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        os.close(write)  # (the live stream ends: so does the run)
        return
        yield  # (an async generator)

    async def runs() -> float:
        first = Dataflow("first")
        first.from_iterable(stream).union(first.from_async_iterable(_fails_soon)).collect()
        with pytest.raises(Exception, match="the run fails here"):
            await run_async(first)
        looks.clear()
        second = Dataflow("second")
        second.from_iterable(stream).union(second.from_async_iterable(ends_after_looks)).collect()
        await run_async(second)
        assert len(looks) >= enough
        return looks[enough - 1] - looks[0]

    with os.fdopen(read) as stream:
        took = asyncio.run(runs())
    # (one chain: `enough` looks at least 0.1 s apart; two: about half that)
    assert took >= (enough - 1) * _live_input._LAST_LOOK * 0.9, f"{enough} looks in {took:.2f} s"
