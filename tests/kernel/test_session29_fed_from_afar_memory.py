"""A step fed by an exchange whose output crosses again to a slow kernel:
`key_by` (records from the other kernel reach the step), a `flat_map`
making 20 records of ~10 KB from each, `key_by` again, and a slow step on
the other kernel. The step is fed from afar, so it used to hand its output
on whatever room the transport had (a kernel waiting for room while the
others' records pile up behind it, or stopping its reading, could wait for
ever on a kernel waiting for it), and each batch's output was made at once
(in pieces only past 65,536 records), however large its records. Process
0's kernel peaked at 78, 195 and 540 MB for 1,000, 4,000 and 16,000 source
records. Now the step waits for room, still reading what the others send,
and the flat_map's pieces are sized by bytes too: the peak memory is the
same for N and 4N records, on two processes and on one of two kernels.

The deadlock tests run shapes in which kernels send to each other both
ways at once, each of them slow, under a timeout that turns a hang into a
failure; their outputs are compared with plain Python's."""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter

import pytest
from _memory_cluster import PROCESS, Sampler, run_cluster

from kernel import Dataflow, current_kernel, run_async

MULTIPLY = 20
KEYS = 64
PAD = "m" * 10_000  # each multiplied record crosses as ~10 KB
SLOW_PER_RECORD = 0.00005  # s: a slow kernel handles ~20,000 records/s

pytestmark = pytest.mark.usefixtures("no_leaks")

def _spin(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


def _slow_on_process_1(key):
    if PROCESS[0] == 1:
        _spin(SLOW_PER_RECORD)
    return key


def _slow_on_kernel_1(key):
    if current_kernel().context.index == 1:
        _spin(SLOW_PER_RECORD)
    return key


def _slow_everywhere(key):
    _spin(0.00002)
    return key


def _multiplied(x: int) -> list[str]:
    return [f"{x:08d}{i:02d}{PAD}" for i in range(MULTIPLY)]


def _fed_from_afar(n: int, slow):
    """The measured shape: the flat_map is fed by an exchange, and its
    output crosses again, to `slow`."""
    flow = Dataflow("fed-from-afar")
    numbers = flow.from_iterable(range(n))
    crossed = numbers.key_by(lambda x: x % 7).map(lambda pair: pair[1])
    keys = crossed.flat_map(_multiplied).key_by(lambda r: int(r[:8]) % KEYS).map(lambda pair: pair[0])
    counts = keys.map(slow).key_by(lambda k: k).count().collect()
    return flow, counts


def reference(n: int) -> dict:
    expected = Counter()
    for x in range(n):
        expected[x % KEYS] += MULTIPLY
    return dict(expected)


def run_cores(flow, cores: int, timeout: float) -> None:
    """`run(flow, cores=cores)`, a hang past `timeout` a failure (its
    kernels are stopped: cancelling `run_async` ends them)."""
    try:
        asyncio.run(asyncio.wait_for(run_async(flow, cores=cores), timeout))
    except TimeoutError:
        pytest.fail(f"the run on {cores} kernels did not finish within {timeout} s (a hang)")


# -- memory -------------------------------------------------------------------


def test_two_processes_a_step_fed_from_afar_into_a_slow_process_runs_in_bounded_memory():
    n = 600
    small_counts, small_peaks = run_cluster(lambda n: _fed_from_afar(n, _slow_on_process_1), n)
    large_counts, large_peaks = run_cluster(lambda n: _fed_from_afar(n, _slow_on_process_1), 4 * n)
    assert small_counts == reference(n)
    assert large_counts == reference(4 * n)
    # 4N sends ~180 MB more across than N (1,800 more source records x 20 x
    # 10 KB, half of them across): held anywhere, it shows.
    for i in (0, 1):
        assert large_peaks[i] - small_peaks[i] < 30, (small_peaks, large_peaks)


def test_two_kernels_of_one_process_a_step_fed_from_afar_into_a_slow_kernel_runs_in_bounded_memory():
    peaks, results = [], []
    for n in (600, 2_400):
        flow, counts = _fed_from_afar(n, _slow_on_kernel_1)
        with Sampler(lambda: [os.getpid()]) as sampler:
            sampler.peaks.append({})
            run_cores(flow, 2, 60.0)
        sampler.peaks[0].pop(os.getpid(), None)  # this test process: not its kernels
        peaks.append(sampler.mb()[0])
        results.append(dict(counts.items))
        assert results[-1] == reference(n)
    assert peaks[1] - peaks[0] < 30, peaks


# -- no deadlock --------------------------------------------------------------


@pytest.mark.parametrize("cores", [2, 3])
def test_kernels_of_one_process_sending_to_each_other_both_ways_all_slow_never_wait_for_ever(cores):
    n = 600
    flow, counts = _fed_from_afar(n, _slow_everywhere)
    run_cores(flow, cores, 10.0)
    assert dict(counts.items) == reference(n)


def test_two_processes_sending_to_each_other_both_ways_all_slow_never_wait_for_ever():
    n = 600
    counts, _ = run_cluster(lambda n: _fed_from_afar(n, _slow_everywhere), n, timeout=10.0)
    assert counts == reference(n)


def _loop(n: int, rounds: int):
    """A loop whose body crosses kernels twice a round: each record (id,
    rounds left, pad) goes by `key_by` to another kernel, a slow step, out
    of the loop without its pad, and while it has rounds left back in as
    20 records of ~10 KB (distinct strings: pickle writes one object
    repeated in a batch once), which cross again in the next round."""

    def body(records):
        crossed = records.key_by(lambda r: r[0] % 7).map(lambda pair: pair[1]).map(_slow_everywhere)
        again = crossed.filter(lambda r: r[1] > 0).flat_map(
            lambda r: [(r[0] * MULTIPLY + i, r[1] - 1, f"{i}{PAD}") for i in range(MULTIPLY)])
        moved = again.key_by(lambda r: r[0] % 5).map(lambda pair: pair[1])
        return moved, crossed.map(lambda r: (r[0], r[1]))

    flow = Dataflow("fed-from-afar-loop")
    out = flow.from_iterable([(x, rounds, "") for x in range(n)]).iterate(body).collect()
    return flow, out


def loop_reference(n: int, rounds: int) -> Counter:
    expected, now = Counter(), [(x, rounds) for x in range(n)]
    while now:
        expected.update(now)
        now = [(x * MULTIPLY + i, left - 1) for x, left in now if left > 0 for i in range(MULTIPLY)]
    return expected


@pytest.mark.parametrize("cores", [2, 3])
def test_a_loop_whose_body_crosses_kernels_with_large_records_never_waits_for_ever(cores):
    flow, out = _loop(25, 2)
    run_cores(flow, cores, 10.0)
    assert Counter(out.items) == loop_reference(25, 2)
