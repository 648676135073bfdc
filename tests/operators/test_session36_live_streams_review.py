"""Review of `from_iterable` over a live stream (operators/_live_input.py):
cases the first tests did not reach. Each waits with a deadline: a hang
fails its test."""

from __future__ import annotations

import asyncio
import os

import pytest
from _live_streams import DEADLINE, cancelled_while_reading, piped

from kernel import Dataflow, run_async


async def test_a_run_on_two_kernels_after_one_cancelled_over_the_stream_says_why_it_cannot_read_it():
    """A run cancelled while its reader thread waited in a read leaves that
    thread to a later run over the same input. A later run on two kernels
    reads it in kernel 0, a process forked with a copy of the reader but
    not its thread: it waited for ever. Now it is refused, saying why, and
    a run on one kernel then takes the reader over with every line."""
    read, write = os.pipe()
    with os.fdopen(read) as stream, os.fdopen(write, "w") as out:
        await cancelled_while_reading(stream, out)
        second = Dataflow("second")
        second.from_iterable(stream).map(str.strip).collect()
        with pytest.raises(Exception) as info:
            await asyncio.wait_for(run_async(second, cores=2), DEADLINE)
        message = str(info.value)
        assert "left its reader thread" in message and "cores=1" in message, message
        third = Dataflow("third")
        rest = third.from_iterable(stream).map(str.strip).collect()
        await asyncio.wait_for(run_async(third), DEADLINE)
    assert rest.items == ["1", "2", "3"]


@pytest.mark.parametrize("through", ["file", "generator"])
def test_two_sources_over_the_same_stream_get_each_line_once_between_them(through):
    """`from_iterable` twice over one pipe in a run: each source's thread
    iterated it at the same time, and the file object, read from two
    threads, lost lines and gave others twice (a generator over it raised
    "generator already executing"). Each line goes to one of them, as
    when both sources read it on the kernel's loop."""
    from kernel import run

    total = 30_000
    with piped(lambda out: out.write("".join(f"{i}\n" for i in range(total)))) as stream:
        lines = stream if through == "file" else (line for line in stream)
        flow = Dataflow("twice")
        first = flow.from_iterable(lines, batch_size=64).map(int)
        second = flow.from_iterable(lines, batch_size=64).map(int)
        out = first.union(second).collect()
        run(flow)
    assert sorted(out.items) == list(range(total))


def test_runs_over_streams_one_after_another_leave_no_lock_behind():
    """The lock each stream's readers take turns at goes with its last
    reader: a service running a flow over each connection it accepts kept
    one for every connection, for as long as it ran."""
    import gc

    from kernel.operators import _live_input

    from kernel import run

    before = len(_live_input._iterating)
    for _ in range(20):
        read, write = os.pipe()
        with os.fdopen(write, "w") as out:
            out.write("1\n2\n")
        with os.fdopen(read) as stream:
            flow = Dataflow("each")
            got = flow.from_iterable(stream).map(int).collect()
            run(flow)
        assert got.items == [1, 2]
    gc.collect()
    assert len(_live_input._iterating) <= before


@pytest.mark.parametrize("batch_size", [1, 100])
def test_the_reader_stays_a_few_batches_ahead_of_a_source_taking_little_at_a_time(monkeypatch, batch_size):
    """The reader pauses once `limit` records wait (4 batches, at least
    4,096). Woken by each take, however small, it read a chunk more (up to
    the limit) each time: a source taking one record a poll let 100,000
    records pile up, and an endless stream would fill the memory."""

    from kernel.operators import _live_input

    from kernel import run

    total, waiting = 100_000, []
    take = _live_input.LiveReader.take

    def measured(self, size):
        waiting.append(len(self.arrived))
        return take(self, size)

    monkeypatch.setattr(_live_input.LiveReader, "take", measured)
    with piped(lambda out: out.write("".join(f"{i}\n" for i in range(total)))) as stream:
        flow = Dataflow("ahead")
        out = flow.from_iterable(stream, batch_size=batch_size).map(int).collect()
        run(flow)
    assert out.items == list(range(total))
    assert max(waiting) <= 4 * max(batch_size, 1024), max(waiting)
