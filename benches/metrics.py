"""What serving metrics costs: benches/pipelines.py's pipelines with
`dashboard=` on and off, and how long a scrape of a 16-step job takes.

    python -m benches.metrics                 # word count, heavy map, windowed sum on 1 and 2 kernels
    python -m benches.metrics --quick         # smoke test
    python -m benches.metrics --cores 2 --only heavy,windows --reps 201 --scrape-every 15

Overhead: each pipeline of benches/pipelines.py (the same data, the same
flows), run alternately without metrics and with `dashboard=` while a
client scrapes /metrics every 100 ms (far more often than Prometheus's
usual 15 s; on one kernel the scrape runs on the kernel's own loop);
each rep runs both, side by side, and its cost is the pair's ratio, so a
slow stretch of the shared machine hits both alike; the table gives the
median pair and, for the CPU cost, a 95% confidence interval of that
median (distribution-free, from order statistics). Target: <= 2% more CPU
with metrics, shown only when the whole interval is within it; with 15
reps the interval spans the 4th to the 12th of 15 pairs.

Scrape: a job of 16 steps (a held-open source, 14 maps, a collect) on 2
kernels, scraped 200 times by an HTTP client in the launcher's process:
the whole GET, parse not included. Target: <= 20 ms.

Dashboard (the same job): the page's weight in bytes (page, script, style,
graph, one live update), the rate of live updates a client of
/api/events receives, and the time of GET /api/state.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import math
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

from benches._report import machine, median_ci, percentile, table
from benches.pipelines import (
    PIPELINES,
    _event_key,
    _event_time,
    _event_value,
    add_only_argument,
    heavy,
    make_events,
    make_lines,
    plain_heavy,
    plain_window_sums,
    plain_wordcount,
    selected_pipelines,
    word_key,
)
from kernel import Dataflow, run
from operators import Tumbling

TARGET_OVERHEAD = 0.02
TARGET_SCRAPE_MS = 20.0
SCRAPE_EVERY = 0.1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scraper:
    """Another process that GETs http://127.0.0.1:PORT/metrics every
    SCRAPE_EVERY seconds, as Prometheus would (a thread of this process
    would compete with a one-kernel run for the GIL, which a real scraper
    does not). Every run with metrics listens on the same port."""

    CODE = (
        "import sys, time, urllib.request\n"
        "url, every = sys.argv[1], float(sys.argv[2])\n"
        "while True:\n"
        "    try:\n"
        "        urllib.request.urlopen(url, timeout=1).read()\n"
        "    except OSError:\n"
        "        pass\n"
        "    time.sleep(every)\n"
    )

    def __init__(self, every: float = SCRAPE_EVERY) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.CODE, f"http://127.0.0.1:{self.port}/metrics", str(every)])

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


def cpu_seconds() -> float:
    """CPU time of this process and its reaped children (the kernel
    processes; not the scraper, reaped only at the end)."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def measure(fn, expected) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one checked run of `fn`, from a collected heap."""
    gc.collect()
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    assert expected(result), "results differ from the plain loop's"
    return wall, cpu


def wordcount(lines, cores, dashboard=None):
    flow = Dataflow("wordcount")
    out = flow.from_iterable(lines).flat_map(str.split).key_by(word_key).count().collect()
    run(flow, cores=cores, dashboard=dashboard)
    return dict(out.items)


def heavy_map(records, cores, dashboard=None):
    flow = Dataflow("heavy")
    out = flow.from_iterable(records).map(heavy).collect()
    run(flow, cores=cores, dashboard=dashboard)
    return sorted(out.items)  # several kernels: not in input order


def window_sums(events, cores, dashboard=None):
    flow = Dataflow("windowed-sum")
    sums = (flow.from_iterable(events, timestamp=_event_time, max_delay=0.5)
                .key_by(_event_key).map_values(_event_value).window(Tumbling(1.0)).sum())
    out = sums.collect()
    run(flow, cores=cores, dashboard=dashboard)
    return {(key, window.start): total for key, window, total in out.items}


def verdict(low: float, high: float) -> str:
    """Whether the CPU cost is within TARGET_OVERHEAD, by its confidence
    interval: "yes" when all of it is, "NO" when none of it is, otherwise
    "not shown" (more reps, or a quieter machine, would tell)."""
    if high <= TARGET_OVERHEAD:
        return "yes"
    if low > TARGET_OVERHEAD:
        return "NO"
    return "not shown"


def overhead_rows(reps: int, n_lines: int, n_heavy: int, n_events: int, cores_list,
                  scrape_every: float = SCRAPE_EVERY, only=PIPELINES) -> list[list]:
    """Off and on in turn (off first in even reps, on first in odd ones),
    `reps` times each; medians of wall-clock records/s and of CPU seconds
    (the kernels' included); the costs are medians of each rep's pair of
    runs, on over off, the CPU cost with its 95% confidence interval
    (`median_ci`) and the verdict on it (`verdict`)."""
    cases = []
    if "wordcount" in only:
        lines = make_lines(n_lines)
        cases.append(("word count", n_lines, wordcount, lines, plain_wordcount(lines)))
    if "heavy" in only:
        records = range(n_heavy)
        cases.append(("CPU-heavy map", n_heavy, heavy_map, records, plain_heavy(records)))
    if "windows" in only:
        events = make_events(n_events)
        cases.append(("windowed sum", n_events, window_sums, events, plain_window_sums(events)))
    scraper = Scraper(scrape_every)
    dashboard = f"127.0.0.1:{scraper.port}"
    rows = []
    try:
        for name, units, flow, data, reference in cases:
            for cores in cores_list:
                runs: dict[str, list] = {"off": [], "on": []}
                for rep in range(reps):
                    # off-on, then on-off: whatever a run leaves the next one
                    # (its heap, warm caches) falls on both alike
                    order = (("off", None), ("on", dashboard))
                    for variant, address in (order if rep % 2 == 0 else order[::-1]):
                        def once(flow=flow, data=data, cores=cores, address=address):
                            return flow(data, cores, address)

                        runs[variant].append(measure(once, lambda result, ref=reference: result == ref))
                wall = {v: units / statistics.median(w for w, _ in runs[v]) for v in runs}
                cpu = {v: statistics.median(c for _, c in runs[v]) for v in runs}
                # each rep's two runs were side by side: their ratio is the
                # cost, the drift of the machine mostly cancelled
                pairs = list(zip(runs["off"], runs["on"]))
                wall_cost = statistics.median(1 - off_wall / on_wall for (off_wall, _), (on_wall, _) in pairs)
                cpu_cost, low, high = median_ci([on_cpu / off_cpu - 1 for (_, off_cpu), (_, on_cpu) in pairs])
                rows.append([name, cores, f"{wall['off']:,.0f}", f"{wall['on']:,.0f}", f"{wall_cost:+.1%}",
                             f"{cpu['off']:.3f}", f"{cpu['on']:.3f}", f"{cpu_cost:+.1%}",
                             "too few reps" if math.isinf(low) else f"{low:+.1%} .. {high:+.1%}",
                             verdict(low, high)])
    finally:
        scraper.close()
    return rows


@contextmanager
def sixteen_step_job():
    """A job of 16 steps (a held-open source, 14 maps, a collect) on 2
    kernels with a dashboard; yields its port once both kernels' blocks
    show every record through the last map."""
    with TemporaryDirectory() as folder:
        gate = Path(folder) / "release"

        async def held():
            for n in range(10_000):
                yield n
            while not gate.exists():
                await asyncio.sleep(0.005)

        flow = Dataflow("sixteen")
        stream = flow.from_async_iterable(held, name="source")
        for i in range(14):
            stream = stream.map(abs, name=f"map{i}")
        stream.collect()
        port = free_port()
        job = threading.Thread(target=lambda: run(flow, cores=2, dashboard=f"127.0.0.1:{port}"))
        job.start()
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            while True:
                try:
                    text = urllib.request.urlopen(url, timeout=1).read().decode()
                except OSError:
                    text = ""
                done = [line for line in text.splitlines()
                        if line.startswith('streamkernel_records_out_total{step="map13')]
                if len(done) == 2 and sum(float(line.split()[-1]) for line in done) == 10_000:
                    break
                time.sleep(0.01)
            yield port
        finally:
            gate.touch()
            job.join()


def scrape_row(port: int, scrapes: int) -> list:
    url = f"http://127.0.0.1:{port}/metrics"
    samples = len(urllib.request.urlopen(url, timeout=1).read().decode().splitlines())
    times = []
    for _ in range(scrapes):
        start = time.perf_counter()
        urllib.request.urlopen(url, timeout=1).read()
        times.append((time.perf_counter() - start) * 1e3)
    median, p99 = statistics.median(times), percentile(times, 99)
    return ["16 steps, 2 kernels", samples, f"{median:.2f}", f"{p99:.2f}", f"{max(times):.2f}",
            "yes" if p99 <= TARGET_SCRAPE_MS else "NO"]


def dashboard_rows(port: int, seconds: float, gets: int) -> list[list]:
    """The page's weight (what a browser loads: the page, its script and
    style, the graph; one live update), how often updates come (events
    received on /api/events over `seconds`), and what one state costs to
    make and send (GET /api/state)."""
    base = f"http://127.0.0.1:{port}"

    def size(path: str) -> int:
        return len(urllib.request.urlopen(base + path, timeout=1).read())

    page = {path: size(path) for path in ("/", "/dashboard.js", "/dashboard.css", "/api/graph")}
    events = []
    with urllib.request.urlopen(base + "/api/events", timeout=5) as stream:
        start = time.perf_counter()
        for line in stream:
            if line.startswith(b"data: "):
                events.append((time.perf_counter(), len(line)))
                if time.perf_counter() - start >= seconds:
                    break
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(events)]
    times = []
    for _ in range(gets):
        start = time.perf_counter()
        urllib.request.urlopen(base + "/api/state", timeout=1).read()
        times.append((time.perf_counter() - start) * 1e3)
    return [
        ["page + script + style + graph", f"{sum(page.values()):,} bytes "
         f"({', '.join(f'{p} {n:,}' for p, n in page.items())})"],
        ["one live update (16 steps, 2 kernels)", f"{statistics.median(n for _, n in events):,.0f} bytes"],
        ["update rate", f"{(len(events) - 1) / (events[-1][0] - events[0][0]):.2f}/s "
         f"(gap median {statistics.median(gaps) * 1e3:.0f} ms, max {max(gaps) * 1e3:.0f} ms; "
         f"{len(events)} events)"],
        ["GET /api/state", f"median {statistics.median(times):.2f} ms, p99 {percentile(times, 99):.2f} ms "
         f"({gets} GETs)"],
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    parser.add_argument("--cores", default="1,2", help="comma-separated kernel counts (default 1,2)")
    parser.add_argument("--reps", type=int, default=15, help="runs of each variant (default 15)")
    add_only_argument(parser)
    parser.add_argument("--scrape-every", type=float, default=SCRAPE_EVERY,
                        help="seconds between two scrapes while metrics are on (default 0.1: far more "
                             "often than Prometheus's usual 15 s, to show the cost of serving them)")
    args = parser.parse_args(argv)
    if not args.scrape_every > 0:
        parser.error("--scrape-every must be a positive number of seconds")
    cores_list = sorted({int(c) for c in args.cores.split(",") if c.strip()})
    only = selected_pipelines(parser, args.only)
    if args.quick:
        reps, sizes, scrapes = 3, (20_000, 2_000, 20_000), 20
    else:
        reps, sizes, scrapes = args.reps, (200_000, 100_000, 200_000), 200
    print(machine())
    print()
    print(table(f"Metrics off vs on (scraped every {args.scrape_every:g} s by another process); medians "
                "of interleaved runs",
                ["pipeline", "kernels", "records/s off", "on", "cost", "CPU s off", "on", "CPU cost",
                 "95% interval", "CPU cost <= 2%"],
                overhead_rows(reps, *sizes, cores_list, args.scrape_every, only)))
    print()
    with sixteen_step_job() as port:
        scrape = scrape_row(port, scrapes)
        dashboard = dashboard_rows(port, 2.0 if args.quick else 10.0, scrapes)
    print(table(f"Scrape of /metrics ({scrapes} GETs, ms)",
                ["job", "samples", "median", "p99", "max", "p99 <= 20 ms"], [scrape]))
    print()
    print(table("The dashboard of the same job", ["what", "measured"], dashboard))


if __name__ == "__main__":
    main()
