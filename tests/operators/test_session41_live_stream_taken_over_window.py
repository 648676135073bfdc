"""A run with a state_dir over a live stream whose reader it takes over
from an earlier run (one cancelled before its source took a line), and a
run of another thread over the stream meanwhile: the reader taken over was
marked stopped (its earlier run's end) until its `start`, and the other
run's check for a run reading the stream at once (`_reading_at_once`)
skipped it in that window: not refused, the two runs shared the stream's
lines by timing, and the snapshots counted only one run's share. Held in
that window (a hook around `LiveReader.start`), the other run is now
refused; the run with the state_dir gets every line once, in order."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from _live_streams import DEADLINE

from kernel import Dataflow, run, run_async
from kernel.dataflow._errors import KernelError
from operators._live_input import LiveReader

TOTAL = 3_000


def _flow_over(stream, got: list, name: str) -> Dataflow:
    flow = Dataflow(name)
    flow.from_iterable(stream, name=f"{name} in").map(str.strip).map(int).sink(got.append)
    return flow


def test_a_run_over_a_stream_whose_reader_a_run_with_a_state_dir_is_taking_over_is_refused(
        tmp_path, monkeypatch):
    starts = [threading.Event() for _ in range(3)]  # the earlier run's, the taker's, the other's
    proceed = threading.Event()
    started = iter(starts)
    original = LiveReader.start

    def start(reader, wake):
        this = next(started)
        if this is starts[1]:  # (the taker, between `of` and `start`: held)
            this.set()
            proceed.wait(DEADLINE)
            return original(reader, wake)
        original(reader, wake)
        this.set()

    monkeypatch.setattr(LiveReader, "start", start)
    read_end, write_end = os.pipe()
    taken, other, failures = [], [], []
    with os.fdopen(read_end) as stream:
        async def cancelled_before_a_line():  # (its reader waits in a read: left over, holding nothing)
            running = asyncio.ensure_future(run_async(_flow_over(stream, [], "earlier")))
            assert await asyncio.to_thread(starts[0].wait, DEADLINE)
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running

        asyncio.run(cancelled_before_a_line())

        def in_thread(flow, **options):
            def runs():
                try:
                    run(flow, **options)
                except BaseException as exc:  # (told to the test below)
                    failures.append(exc)
            thread = threading.Thread(target=runs, daemon=True)
            thread.start()
            return thread

        taker = in_thread(_flow_over(stream, taken, "taker"), state_dir=tmp_path / "state")
        try:
            assert starts[1].wait(DEADLINE)
            reading = in_thread(_flow_over(stream, other, "other"))
            reading.join(DEADLINE)  # (refused at its first poll; else it reads on: started)
            assert not starts[2].is_set(), "the other run was not refused, and reads the stream"
        finally:
            proceed.set()
            with os.fdopen(write_end, "w") as fed:
                fed.write("".join(f"{i}\n" for i in range(TOTAL)))
            taker.join(DEADLINE)
            reading.join(DEADLINE)
    assert len(failures) == 1 and isinstance(failures[0], KernelError), failures
    assert "reads its input" in str(failures[0]) and "other in (step 0)" in str(failures[0])
    assert other == []
    assert taken == list(range(TOTAL))
