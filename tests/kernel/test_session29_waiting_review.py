"""Second review of the step fed from afar that waits for room (session
29), for hangs only: shapes the first review did not try, each under a
timeout that turns a hang into a failure, its results compared with plain
Python's. A step fed from afar (key_by, then a flat_map making 20 records
of ~10 KB from each) whose output crosses again waits for room in each of
them (checked while writing these: `Runtime.wait_for_room` was reached by
it on every kernel), with

* an asynchronous sink (`pause_input`, as operators/_redis.py's) whose
  buffer is full on one kernel, or on every kernel, of 2 and 3;
* windows fed from afar whose counts cross again, on a `VirtualClock`;
* `run_async` on a loop kept busy by the caller;
* keys on every one of 4 kernels (each step sends to its own kernel and to
  the others), one kernel slow;
* a run killed after an epoch completed and resumed on the same number of
  kernels and on another (rescale), its steps waiting right after the
  restore: the store holds newer complete epochs than the one resumed.

None hung (runs of each, before these were kept: the report of session 29's
second review)."""

from __future__ import annotations

import asyncio
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from kernel import Dataflow, Operator, VirtualClock, current_kernel, run_async
from operators import Tumbling
from tests._crash_runs import HELD_OPEN, newest_complete, run_cli, visible_lines

pytestmark = pytest.mark.usefixtures("no_leaks")

MULTIPLY = 20
KEYS = 64
PAD = "m" * 10_000  # each multiplied record crosses as ~10 KB


def _spin(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def _multiplied(x: int) -> list[str]:
    return [f"{x:08d}{i:02d}{PAD}" for i in range(MULTIPLY)]


def _slow_everywhere(key):  # (the busy loop's run, the windows' counts)
    _spin(0.00002)
    return key


def _slow_on_kernel_1(key):
    if current_kernel().context.index == 1:
        _spin(0.00005)
    return key


def _reference(n: int) -> dict:
    expected = Counter()
    for x in range(n):
        expected[x % KEYS] += MULTIPLY
    return dict(expected)


def _fed_from_afar(n: int, spread: int = 7):
    """Records cross (`key_by`), are multiplied by a step fed from afar,
    and cross again: that step waits for room."""
    flow = Dataflow("waiting-review")
    crossed = flow.from_iterable(range(n)).key_by(lambda x: x % spread).map(lambda pair: pair[1])
    keys = crossed.flat_map(_multiplied).key_by(lambda r: int(r[:8]) % KEYS).map(lambda pair: pair[0])
    return flow, keys


async def _within(awaitable, timeout: float, what: str) -> None:
    try:
        await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        pytest.fail(f"{what} did not finish within {timeout} s (a hang)")


# -- an asynchronous sink whose buffer is full ------------------------------------------------


class _AsyncSink(Operator):
    """A sink writing in a task of its own (a broker's client): past
    `limit` records buffered it pauses the kernel's input (holding its
    reading) till its slow writer has drained them. Passes its records on,
    to be counted."""

    def __init__(self, slow_on: int | None, limit: int = 200, delay: float = 0.003):
        self.slow_on, self.limit, self.delay = slow_on, limit, delay
        self.buffered = 0
        self.writing = None

    def on_batch(self, port, batch):
        self.emit(list(batch))
        self.buffered += len(batch)
        slow_here = self.slow_on is None or self.context.index == self.slow_on
        if slow_here and self.buffered >= self.limit and self.writing is None:
            self.pause_input(True)
            self.writing = asyncio.get_running_loop().create_task(self._write())

    async def _write(self):
        await asyncio.sleep(self.delay)
        self.buffered = 0
        self.writing = None
        self.pause_input(False)

    def on_end(self):
        return self.writing


@pytest.mark.parametrize("cores, slow_on", [(2, 1), (3, None)])
async def test_an_asynchronous_sink_with_its_buffer_full_while_steps_fed_from_afar_wait(cores, slow_on):
    n = 1_000
    flow, keys = _fed_from_afar(n)
    counts = keys.apply(lambda: _AsyncSink(slow_on), name="async sink").key_by(lambda k: k).count().collect()
    await _within(run_async(flow, cores=cores), 20.0, f"the run on {cores} kernels")
    assert dict(counts.items) == _reference(n)


# -- windows on a virtual clock ---------------------------------------------------------------


async def test_windows_fed_from_afar_whose_counts_cross_again_on_a_virtual_clock():
    n, per_second = 3_000, 500.0
    flow = Dataflow("waiting-review-windows")
    source = flow.from_iterable(range(n), timestamp=lambda x: x / per_second, max_delay=0.0)
    crossed = source.map(lambda x: (x, f"{x}{PAD}")).key_by(lambda r: r[0] % 7).map(lambda pair: pair[1])
    multiplied = crossed.flat_map(lambda r: [(r[0] * MULTIPLY + i, f"{i}{r[1]}") for i in range(MULTIPLY)])
    counts = multiplied.key_by(lambda r: f"{r[0] % KEYS:04d}{PAD[:2_000]}").map_values(lambda r: 1).window(
        Tumbling(1.0)).count()
    again = counts.key_by(lambda r: r[2] % 5).map(lambda pair: (int(pair[1][0][:4]), pair[1][1].start,
                                                                 pair[1][2]))
    out = again.map(_slow_everywhere).collect()
    await _within(run_async(flow, cores=2, clock=VirtualClock()), 20.0, "the run on a virtual clock")
    expected = Counter()
    for x in range(n):
        for i in range(MULTIPLY):
            expected[((x * MULTIPLY + i) % KEYS, float(int(x / per_second)))] += 1
    assert {(key, float(start)): count for key, start, count in out.items} == dict(expected)


# -- run_async on a busy loop -------------------------------------------------------------------


async def test_run_async_on_two_kernels_while_the_callers_loop_is_busy():
    n = 600
    flow, keys = _fed_from_afar(n)
    counts = keys.map(_slow_everywhere).key_by(lambda k: k).count().collect()
    stop = asyncio.Event()

    async def busy():  # the caller's own work: 5 ms at a time
        while not stop.is_set():
            _spin(0.005)
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(busy())
    try:
        await _within(run_async(flow, cores=2), 20.0, "the run beside a busy loop")
    finally:
        stop.set()
        await task
    assert dict(counts.items) == _reference(n)


# -- keys on every kernel ----------------------------------------------------------------------


async def test_four_kernels_each_sending_to_itself_and_to_every_other_one_slow():
    n = 1_000
    flow, keys = _fed_from_afar(n, spread=97)
    counts = keys.map(_slow_on_kernel_1).key_by(lambda k: k).count().collect()
    await _within(run_async(flow, cores=4), 20.0, "the run on 4 kernels")
    assert dict(counts.items) == _reference(n)


# -- resumed, and rescaled -----------------------------------------------------------------------

PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    N, KEYS, MULTIPLY, PAD = int(os.environ["N"]), 64, 20, "m" * 10_000

    def slow(key):
        deadline = time.perf_counter() + 0.00003
        while time.perf_counter() < deadline:
            pass
        return key

    flow = Dataflow("waiting-review-resumed")
    numbers = flow.from_iterable(range(N), batch_size=25)
    crossed = numbers.key_by(lambda x: x % 7).map(lambda pair: pair[1])
    keys = crossed.flat_map(lambda x: [f"{x:08d}{i:02d}{PAD}" for i in range(MULTIPLY)]).key_by(
        lambda r: int(r[:8]) % KEYS).map(lambda pair: pair[0])
    keys.map(slow).key_by(lambda k: k).count().to_files(os.environ["OUT"])
    """
)


@pytest.mark.parametrize("first, second", [(2, 3)])
def test_a_run_resumed_on_another_number_of_kernels_whose_steps_wait_after_the_restore(
        tmp_path: Path, first: int, second: int):
    n = 1_200
    # (held open until the crash: its input, busy-waited, may end under load
    # before kernel 1 has two epochs committed)
    (tmp_path / "pipeline.py").write_text(PIPELINE + HELD_OPEN)
    crashed = run_cli(tmp_path, first, "committed:2@1", N=n, OUT=tmp_path / "out")
    assert crashed.returncode != 0, "the crash point was never reached"
    resumed_from = newest_complete(tmp_path / "state")
    resumed = run_cli(tmp_path, second, None, N=n, OUT=tmp_path / "out")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from epoch {resumed_from}" in resumed.stderr
    assert newest_complete(tmp_path / "state") > resumed_from + 1  # epochs completed while steps waited
    assert dict((key, count) for key, count in visible_lines(tmp_path / "out")) == _reference(n)
