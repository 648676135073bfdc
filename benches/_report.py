"""Shared helpers for the benchmarks: repeated timing, medians, tables."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence


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
    cpus = sorted(os.sched_getaffinity(0))

    def at_once(count: int) -> float:
        reads, pids = [], []
        for i in range(count):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover (the child)
                try:
                    os.sched_setaffinity(0, {cpus[i % len(cpus)]})
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

    return processes * at_once(1) / at_once(processes)
