"""Review of the step fed from afar that waits for room (session 29).

A fused chain fed from afar (map, a slow map, key_by, map_values, then a
windowed count's partials before the exchange) whose head defers part of
its inbox (its budget spent) holds the kernel's reading till it is done
with it (`Instance._defer`). When a watermark reaches the window's
partials meanwhile, and their output (many large keys) goes on in pieces,
the head waits behind them (`Instance._behind_fused`), still holding the
reading; the partials, whose output crosses, now wait for room in the
transport. Two kernels in that state each waited for the other to read:
the run hung (3 runs of 4 at 200,000 records before the fix; never on the
code before the step fed from afar waited)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from kernel import Dataflow, run_async
from operators import Tumbling

pytestmark = pytest.mark.usefixtures("no_leaks")

PAD = "p" * 5_000  # what crosses the first exchange: it fills the rings
KEY_PAD = "k" * 2_000  # each window's partials cross as ~2 KB records


def _spin(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def _slow(x):
    _spin(0.00001)
    return x


def _windowed(n: int, keys: int, per_second: float):
    flow = Dataflow("fused-partials-fed-from-afar")
    src = flow.from_iterable(range(n), timestamp=lambda x: x / per_second, max_delay=0.0)
    crossed = src.map(lambda x: (x, PAD)).key_by(lambda r: r[0] % 7).map(lambda p: p[1][0]).map(_slow)
    counts = crossed.key_by(lambda x: f"{x % keys:06d}{KEY_PAD}").map_values(lambda x: 1).window(
        Tumbling(1.0)).count()
    out = counts.map(lambda r: (int(r[0][:6]), r[1].start, r[2])).collect()
    return flow, out


def _windowed_reference(n: int, keys: int, per_second: float) -> dict:
    expected = Counter()
    for x in range(n):
        expected[(x % keys, float(int(x / per_second)))] += 1
    return dict(expected)


def _run_cores(flow, cores: int, timeout: float) -> None:
    try:
        asyncio.run(asyncio.wait_for(run_async(flow, cores=cores), timeout))
    except TimeoutError:
        pytest.fail(f"the run on {cores} kernels did not finish within {timeout} s (a hang)")


@pytest.mark.parametrize("attempt", range(2))
def test_a_fused_chain_fed_from_afar_whose_partials_wait_for_room_never_holds_the_reading(attempt):
    n, keys, per_second = 120_000, 50_000, 20_000.0
    flow, out = _windowed(n, keys, per_second)
    _run_cores(flow, 2, 12.0)
    got = {(k, float(start)): c for k, start, c in out.items}
    assert got == _windowed_reference(n, keys, per_second)
