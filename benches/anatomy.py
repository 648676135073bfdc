"""Where a kernel's CPU goes: one kernel, two kernels, and two independent one-kernel runs.

    python -m benches.anatomy --pipeline q8            # NEXMark q8, 500,000 events
    python -m benches.anatomy --pipeline windows       # benches/pipelines.py's windowed sum
    python -m benches.anatomy --pipeline wordcount     # its word count (200,000 lines)
    python -m benches.anatomy --quick                  # smoke run (q8, 20,000 events)
    python -m benches.anatomy --pipeline q4 --kernels 16   # 16 kernels against 16 independent ones

For a pipeline slower on two kernels than on one (issue 13), this says
which part of a kernel's time grows. Each configuration runs in a forked
child of its own, so none inherits another's heap:

* one kernel, every event;
* two kernels (`run(flow, cores=2)`), every event;
* two independent one-kernel runs at once, each pinned to a CPU of its own
  and given half the events (NEXMark: a generator of half as many events;
  the windowed sum: every other event): the same work per kernel as two
  kernels without anything crossing between them, on a machine just as
  busy.

`--kernels N` compares N kernels with N independent runs of 1/N each
instead (on a machine with N CPUs: where the scaling curve flattens); past
two kernels each row shows the calls of all kernels and the median,
smallest and largest kernel's milliseconds.

In every kernel, each activation's CPU time (`time.thread_time`, which a
process descheduled by the machine does not count) is summed by what ran:
each step's instance, the ring reader (two kernels), and, inside those,
the exchange's `deliver` and the transport's sends (data, a watermark,
and past two kernels several edges' watermarks in one frame:
`send_watermarks`; a library without it is timed without that row, for
`benches/curve.sh AB=1`). The kernel's own total
runs from the runtime's start to its end (results not packed yet).
Instrumenting costs ~1.5 us a call (two clock reads of ~0.8 us each on the
VM of benches/RESULTS.md), so rows of many short calls read high.

What it found (benches/RESULTS.md, issue 13, fifth session): on q8 each of
two kernels spends ~300 ms more CPU than an independent kernel on the same
half, in the exchanges' sends and the ring reader and in more, smaller
activations of the join and the distinct, though only ~16,000 records a
kernel cross.
"""

from __future__ import annotations

import argparse
import collections
import os
import pickle
import statistics
import tempfile
import time

from benches._report import machine, table

DEFAULT_EVENTS = 500_000
QUICK_EVENTS = 20_000
PIPELINES = ("q0", "q1", "q2", "q3", "q4", "q5", "q6", "q7", "q8", "windows", "wordcount")
#: benches/pipelines.py's own sizes: events of the windowed sum, lines of word count
PIPELINE_EVENTS = {"windows": 200_000, "wordcount": 200_000}
CONFIGURATIONS = ("one kernel", "two kernels", "two independent kernels, half each")


def configurations(kernels: int) -> tuple[str, str, str]:
    if kernels == 2:
        return CONFIGURATIONS
    return ("one kernel", f"{kernels} kernels", f"{kernels} independent kernels, 1/{kernels} each")


class Probe:
    """Per-kernel CPU by what ran, kept in each kernel process and written
    to `folder` (one file per kernel) when its runtime has ended."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: collections.Counter = collections.Counter()
        self.started = 0.0

    def install(self) -> None:
        from kernel.net import _transport

        from kernel.execution import _execute
        from kernel.runtime import _exchange, _instance
        from kernel.runtime._runtime import Runtime

        inside = "  inside: "  # calls made within an activation timed above
        self._time(_instance.Instance, "activate", lambda i: f"step {i.name}")
        self._time(_transport._Reader, "activate", lambda _: "ring reader")
        self._time(_exchange.ExchangeOutput, "deliver", lambda e: f"{inside}exchange after {e.upstream.name}")
        self._time(_transport.ProcessTransport, "send_batch", lambda _: f"{inside}transport send_batch")
        self._time(_transport.ProcessTransport, "send_progress", lambda _: f"{inside}transport send_progress")
        if hasattr(_transport.ProcessTransport, "send_watermarks"):  # several edges at once, past two kernels
            self._time(_transport.ProcessTransport, "send_watermarks",
                       lambda _: f"{inside}transport send_watermarks")
        probe, start, pack = self, Runtime.start, _execute.pack_results

        def started(runtime):
            probe.seconds.clear()
            probe.calls.clear()
            probe.started = time.thread_time()
            return start(runtime)

        def packed(results, names):  # a kernel process's runtime has ended
            probe.dump()
            return pack(results, names)

        Runtime.start = started
        _execute.pack_results = packed

    def _time(self, cls, method: str, label) -> None:
        original, seconds, calls, clock = getattr(cls, method), self.seconds, self.calls, time.thread_time

        def timed(obj, *args):
            began = clock()
            try:
                return original(obj, *args)
            finally:
                key = label(obj)
                seconds[key] += clock() - began
                calls[key] += 1

        setattr(cls, method, timed)

    def dump(self) -> None:
        total = time.thread_time() - self.started
        with open(os.path.join(self.folder, f"kernel-{os.getpid()}"), "wb") as out:
            pickle.dump((total, dict(self.seconds), dict(self.calls)), out)

    def read(self) -> list[tuple[float, dict, dict]]:
        kernels = []
        for name in sorted(os.listdir(self.folder)):
            with open(os.path.join(self.folder, name), "rb") as file:
                kernels.append(pickle.load(file))
            os.remove(os.path.join(self.folder, name))
        return kernels


def workload(pipeline: str, events: int):
    """`run_one(cores, share)`: the pipeline over every event (share 1), or
    over one in `share` of them, on `cores` kernels; returns the number of
    results."""
    if pipeline == "windows":
        from benches.pipelines import make_events, ours_window_sums

        data = make_events(events)

        def run_windows(cores: int, share: int) -> int:
            return len(ours_window_sums(data[::share], cores))

        return run_windows
    if pipeline == "wordcount":
        from benches.pipelines import make_lines, ours_wordcount

        lines = make_lines(events)

        def run_wordcount(cores: int, share: int) -> int:
            return len(ours_wordcount(lines[::share], cores))

        return run_wordcount
    from benches import nexmark
    from benches._nexmark_generator import Generator

    def run_query(cores: int, share: int) -> int:
        return nexmark.ours(pipeline, Generator(events // share), cores)

    return run_query


def in_child(fn, cpu: int | None = None) -> int:
    """Fork; the child (pinned to `cpu`) runs `fn` and exits; returns its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        status = 1
        try:
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            fn()
            status = 0
        finally:
            os._exit(status)
    return pid


def measure(pipeline: str, events: int, kernels: int = 2) -> dict[str, list]:
    """Each configuration's kernels: (total CPU, seconds by what ran, calls)."""
    run_one = workload(pipeline, events)
    found = {}
    with tempfile.TemporaryDirectory(prefix="anatomy-") as folder:
        probe = Probe(folder)
        probe.install()

        def one_kernel():
            run_one(1, 1)
            probe.dump()  # one kernel runs in this process: no results packed

        def independent():
            run_one(1, kernels)
            probe.dump()

        cpus = sorted(os.sched_getaffinity(0))
        one, together, apart = configurations(kernels)
        plans = {
            one: [(one_kernel, None)],
            together: [(lambda: run_one(kernels, 1), None)],
            apart: [(independent, cpus[k % len(cpus)]) for k in range(kernels)],
        }
        for name, children in plans.items():
            pids = [in_child(fn, cpu) for fn, cpu in children]
            for pid in pids:
                _, status = os.waitpid(pid, 0)
                if status != 0:
                    raise RuntimeError(f"{name}: the run failed (status {status})")
            found[name] = probe.read()
    return found


def rows_of(kernels: list) -> tuple[list[str], list[list]]:
    if len(kernels) > 2:
        return summary_rows_of(kernels)
    header = ["what ran"] + [f"kernel {k}: calls" if i % 2 == 0 else f"kernel {k}: ms"
                             for k in range(len(kernels)) for i in range(2)]
    keys = sorted({key for _, seconds, _ in kernels for key in seconds},
                  key=lambda key: -max(seconds.get(key, 0.0) for _, seconds, _ in kernels))
    rows = [["kernel's CPU, start to end"]
            + [cell for total, _, _ in kernels for cell in ("", f"{total * 1e3:,.1f}")]]
    for key in keys:
        rows.append([key] + [cell for _, seconds, calls in kernels
                             for cell in (f"{calls.get(key, 0):,}", f"{seconds.get(key, 0.0) * 1e3:,.1f}")])
    return header, rows


def summary_rows_of(kernels: list) -> tuple[list[str], list[list]]:
    """Many kernels: each row's calls over all of them, and the median,
    smallest and largest kernel's milliseconds."""
    header = ["what ran", "calls, all kernels", "median kernel: ms", "least: ms", "most: ms"]

    def cells(values: list[float]) -> list[str]:
        return [f"{statistics.median(values) * 1e3:,.1f}", f"{min(values) * 1e3:,.1f}",
                f"{max(values) * 1e3:,.1f}"]

    keys = sorted({key for _, seconds, _ in kernels for key in seconds},
                  key=lambda key: -statistics.median(seconds.get(key, 0.0) for _, seconds, _ in kernels))
    rows = [["kernel's CPU, start to end", "", *cells([total for total, _, _ in kernels])]]
    for key in keys:
        calls_of_all = sum(calls.get(key, 0) for _, _, calls in kernels)
        rows.append([key, f"{calls_of_all:,}", *cells([seconds.get(key, 0.0) for _, seconds, _ in kernels])])
    return header, rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", choices=PIPELINES, default="q8")
    parser.add_argument("--events", type=int, default=None,
                        help=f"events (default {DEFAULT_EVENTS:,}; the windowed sum's events and word "
                             f"count's lines {PIPELINE_EVENTS['windows']:,})")
    parser.add_argument("--quick", action="store_true", help=f"a smoke run ({QUICK_EVENTS:,} events)")
    parser.add_argument("--kernels", type=int, default=2,
                        help="kernels to compare with as many independent runs (default 2)")
    args = parser.parse_args(argv)
    if args.kernels < 2:
        parser.error(f"--kernels must be at least 2, got {args.kernels}")
    if args.events is not None and args.events < args.kernels:
        parser.error(f"--events must be at least {args.kernels} (--kernels), got {args.events}")
    events = args.events or (QUICK_EVENTS if args.quick else
                             PIPELINE_EVENTS.get(args.pipeline, DEFAULT_EVENTS))
    print(machine())
    for name, kernels in measure(args.pipeline, events, args.kernels).items():
        header, rows = rows_of(kernels)
        print()
        title = f"{args.pipeline}, {events:,} events: {name} (CPU ms by what ran, thread_time)"
        print(table(title, header, rows))


if __name__ == "__main__":
    main()
