"""Shared helpers for the benchmarks: repeated timing, medians, tables."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from kernel.execution._cores import _cpus_for


def machine() -> str:
    """One line naming the machine, for tables and benches/RESULTS.md."""
    return (f"{platform.machine()}, nproc={os.cpu_count()}, "
            f"Python {platform.python_version()} ({sys.implementation.name})")


def median_of(runs: int, fn: Callable[[], float]) -> float:
    """Median of `runs` calls of `fn`, each returning one measurement."""
    return statistics.median(fn() for _ in range(runs))


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call of `fn`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `samples`, nearest-rank."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def median_ci(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(median, low, high): the median of `samples` and a distribution-free
    confidence interval for it, from order statistics: the k-th smallest
    and k-th largest, k the largest rank at which the number of samples
    below the true median, binomial(n, 1/2), falls outside [k, n - k] with
    probability at most 1 - `confidence`. With 6 to 8 samples at 95% that
    is the whole range; with 5 or fewer even the whole range misses the
    median too often (all on one side: 2 / 2^n), and the interval is
    (-inf, inf).

    For A/B benchmarks, `samples` are the per-pair ratios of runs made side
    by side (B's run and A's, next to each other in time): a machine that
    drifts over minutes moves both runs of a pair alike, so the pairs'
    spread is much narrower than that of either variant's runs."""
    ordered = sorted(samples)
    n = len(ordered)
    if not n:
        return float("nan"), float("nan"), float("nan")
    # P(fewer than k samples below the median) = sum_{i<k} C(n, i) / 2^n;
    # the interval [x_(k), x_(n-k+1)] misses the median with twice that.
    k, tail = 0, 0.0
    while k <= n // 2:
        tail_next = tail + math.comb(n, k) / 2.0 ** n
        if 2 * tail_next > 1 - confidence:
            break
        tail, k = tail_next, k + 1
    if k:
        low, high = ordered[k - 1], ordered[n - k]
    else:
        low, high = -math.inf, math.inf
    return statistics.median(ordered), low, high


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table (also valid Markdown), right-aligned numbers."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row):
        return "| " + " | ".join(c.rjust(w) if i else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(row, widths))) + " |"

    out = [f"### {title}", "", line(cells[0]),
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells[1:]]
    return "\n".join(out)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# The machine's parallel ceiling right now: on the 2-vCPU VM of
# benches/RESULTS.md the two vCPUs sometimes run at full speed each and
# sometimes at half speed whenever both are busy (a plain loop: ~105-135 ms
# alone on either, ~200 ms on each when both run), so "2 kernels vs 1"
# means little without what the machine allowed at that moment.
_CEILING_LOOPS = 1_500_000


def _spin(loops: int) -> float:
    started = time.perf_counter()
    total = 0
    for i in range(loops):
        total += i
    return time.perf_counter() - started


def parallel_ceiling(processes: int, loops: int = _CEILING_LOOPS) -> float:
    """How many times the work of one process `processes` forked processes,
    each pinned to its own CPU (as kernels are), get through in the same
    time: `processes * t_one / t_all` for a plain Python loop (`processes`
    at best)."""
    def at_once(count: int) -> float:
        reads, pids = [], []
        cpus = _cpus_for(count)  # the CPUs `count` kernels are pinned to
        for i in range(count):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child)
                try:
                    os.sched_setaffinity(0, {cpus[i]})
                    os.write(write, repr(_spin(loops)).encode())
                finally:
                    os._exit(0)
            os.close(write)
            reads.append(read)
            pids.append(pid)
        took = []
        for read in reads:
            with os.fdopen(read, "rb") as pipe:
                took.append(float(pipe.read()))
        for pid in pids:
            os.waitpid(pid, 0)
        return max(took)

    # The faster of two runs alone, and of two at once: one that the
    # machine slowed (a timer, a process of the run before still exiting,
    # the test suite's other worker) would make the ceiling above
    # `processes` (a suite run once read 2.56x for two, and with one run at
    # once 2.72x) or below what the machine allows.
    alone = min(at_once(1), at_once(1))
    return processes * alone / min(at_once(processes), at_once(processes))
