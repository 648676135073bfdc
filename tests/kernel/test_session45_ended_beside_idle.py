"""An input that ends beside an idle one: its +inf (what a source says just
before its end) is not the frontier. It closed every window, so the idle
input's next events, ahead of every watermark any source had given, came
out late: a bounded table read beside a quiet live stream dropped all of
the stream's later events, for the rest of the run."""

from __future__ import annotations

import asyncio
import math
import time

from kernel import Dataflow, run
from kernel.runtime._progress import Change, Frontier
from operators import Tumbling

INF = math.inf


def _two_channels() -> tuple[Frontier, int, int]:
    frontier = Frontier()
    return frontier, frontier.add_channel(), frontier.add_channel()


def test_a_channel_at_inf_beside_an_idle_one_leaves_the_frontier_at_the_idle_ones_watermark():
    frontier, table, live = _two_channels()
    frontier.observe_watermark(live, 0.5)
    frontier.observe_watermark(table, 2.0)
    assert frontier.observe_idle(live) == Change(advanced=2.0)
    # the table's source ends: +inf, then its END
    assert frontier.observe_watermark(table, INF) == Change(all_idle=True, went_idle=True)
    assert frontier.value == 2.0 and frontier.idle
    assert frontier.observe_end(table) == Change(all_idle=True)
    assert frontier.value == 2.0
    # the live input goes on where it was: nothing of it is behind the frontier
    assert frontier.observe_watermark(live, 5.0) == Change(reactivated=2.0, advanced=5.0)
    assert frontier.observe_end(live) == Change(advanced=INF) and frontier.ended


def test_an_input_going_idle_beside_one_at_inf_makes_every_input_idle():
    frontier, table, live = _two_channels()
    frontier.observe_watermark(live, 0.5)
    assert frontier.observe_watermark(table, INF) == Change(advanced=0.5)
    assert frontier.observe_idle(live) == Change(all_idle=True, went_idle=True)
    assert frontier.value == 0.5


def test_a_restored_frontier_counts_a_channel_at_inf_as_done():
    frontier, table, live = _two_channels()
    frontier.observe_watermark(live, 1.0)
    frontier.observe_watermark(table, INF)
    again, _, _ = _two_channels()
    again.restore(*frontier.snapshot())
    assert again.observe_idle(live) == Change(all_idle=True, went_idle=True)
    assert again.value == 1.0


def test_a_quiet_live_stream_beside_a_table_that_ends_keeps_its_later_events():
    # One kernel: the sources' tasks and the idle checks share one loop's
    # clock, so the live stream is idle (idle_timeout 0.02 s: within 0.04 s)
    # before the table yields, 0.2 s in; the live stream yields again once
    # the table's generator is done and its end has had time to arrive.
    table_done = asyncio.Event()

    async def table_rows():
        await asyncio.sleep(0.2)
        yield ("a", 1.0)
        yield ("a", 2.0)
        table_done.set()

    async def quiet():
        yield ("b", 0.5)
        await table_done.wait()
        deadline = time.monotonic() + 0.1
        while time.monotonic() < deadline:  # the table's +inf and END go through
            await asyncio.sleep(0.01)
        yield ("b", 5.0)
        yield ("b", 5.5)

    flow = Dataflow("table beside a live stream")
    table = flow.from_async_iterable(table_rows, timestamp=lambda e: e[1], idle_timeout=0.02)
    live = flow.from_async_iterable(quiet, timestamp=lambda e: e[1], idle_timeout=0.02)
    counts = table.union(live).key_by(lambda e: e[0]).window(Tumbling(1.0), late=True).count()
    out, late = counts.collect(), counts.late.collect()
    run(flow)

    # brute force: each event in the window [floor(t), floor(t) + 1); none
    # is behind any watermark given before it
    events = [("a", 1.0), ("a", 2.0), ("b", 0.5), ("b", 5.0), ("b", 5.5)]
    expected: dict = {}
    for key, t in events:
        expected[(key, math.floor(t))] = expected.get((key, math.floor(t)), 0) + 1
    assert late.items == []
    assert {(key, window.start): n for key, window, n in out.items} == expected
