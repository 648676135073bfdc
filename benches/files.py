"""The file source: `from_files` lines/s and JSON Lines records/s, beside plain loops.

    python -m benches.files                 # full run (about a minute)
    python -m benches.files --quick         # smoke test
    python -m benches.files --cores 1,2     # rows per kernel count

Two files are written first (seeded, to a temporary directory, so they sit
in the page cache: this measures the source, not the disk): log-like text
lines (~70 bytes) and JSON Lines records (a dict of 5 fields, ~90 bytes).
Each is read three ways, the counts checked equal:

* plain: `for line in open(path): n += 1` (text mode: decoded lines), and
  for JSON Lines `for line in open(path, "rb"): decode(line)` with a
  `msgspec.json.Decoder`: what a user would write without a dataflow;
* ours: `flow.from_files(path, format=...)` into a counting operator (it
  adds `len(batch)`, the least a step downstream can do), run with
  `run(flow, cores=N)`, timed from the call to its return (process start-up
  included on several cores).

"per kernel" is records/s divided by the kernels; "vs 1 core" the speed-up
of N kernels over one (on a 2-core box shared with the OS, 2 kernels cannot
reach 2x). Targets (issue 15): >= 1,000,000 lines/s per kernel for lines,
>= 300,000 records/s per kernel for JSON Lines, and 2 kernels faster than 1.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import random
import shutil
import statistics
import tempfile
import time

import msgspec

from benches._report import machine, table
from benches._sinks import CountRecords
from kernel import Dataflow, run

WORDS = ["GET", "POST", "/api/v1/items", "/login", "200", "404", "500", "user", "cache", "miss",
         "hit", "ms", "db", "query", "slow", "ok"]


def write_lines(path: str, count: int) -> None:
    rng = random.Random(1)
    with open(path, "w") as f:
        for n in range(count):
            words = " ".join(rng.choice(WORDS) for _ in range(6))
            f.write(f"2026-12-02T21:{n % 60:02d}:{n % 59:02d}.{n % 1000:03d}Z host-{n % 7} {words}\n")


def write_jsonl(path: str, count: int) -> None:
    rng = random.Random(2)
    with open(path, "w") as f:
        for n in range(count):
            f.write(json.dumps({"id": n, "user": f"u{rng.randrange(10_000)}", "item": rng.randrange(1000),
                                "price": round(rng.random() * 100, 2), "kind": rng.choice(WORDS)}) + "\n")


def plain_lines(path: str) -> int:
    n = 0
    for _line in open(path):
        n += 1
    return n


def plain_jsonl(path: str) -> int:
    decode = msgspec.json.Decoder().decode
    n = 0
    with open(path, "rb") as f:
        for line in f:
            decode(line)
            n += 1
    return n


def ours(path: str, format: str, cores: int) -> int:
    flow = Dataflow("files")
    counts = flow.from_files(path, format=format).apply(CountRecords).collect()
    run(flow, cores=cores)
    return sum(counts.items)


def timed(fn) -> tuple[float, int]:
    gc.collect()
    start = time.perf_counter()
    n = fn()
    return time.perf_counter() - start, n


def measure(label: str, path: str, format: str, plain, expected: int, cores_list, runs: int):
    """Rows for one file: the plain loop, then ours per kernel count; runs interleaved."""
    engines = [("plain", 1, lambda: plain(path))] + [
        ("ours", cores, lambda cores=cores: ours(path, format, cores)) for cores in cores_list]
    times: dict[tuple[str, int], list[float]] = {(name, cores): [] for name, cores, _ in engines}
    for _ in range(runs):
        for name, cores, fn in engines:
            seconds, n = timed(fn)
            assert n == expected, f"{name} on {cores} read {n} records, not {expected}"
            times[(name, cores)].append(seconds)
    target = 1_000_000 if format == "lines" else 300_000
    one_core = expected / statistics.median(times[("ours", 1)]) if 1 in cores_list else None
    plain_rate = expected / statistics.median(times[("plain", 1)])
    rows = []
    for (name, cores), samples in times.items():
        rate = expected / statistics.median(samples)
        per_kernel = rate / cores
        is_ours = name == "ours"
        rows.append([
            label,
            "plain loop" if not is_ours else f"from_files(format={format!r})",
            cores, rate, per_kernel, f"{rate / plain_rate:.0%}",
            f"{rate / one_core:.2f}x" if is_ours and one_core else "",
            f">= {target:,}/kernel" if is_ours else "",
            ("PASS" if per_kernel >= target and (cores == 1 or not one_core or rate > one_core) else "FAIL")
            if is_ours else "",
        ])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small files, one run: a smoke test")
    parser.add_argument("--cores", default="1,2", help="kernel counts, e.g. 1,2")
    args = parser.parse_args()
    cores_list = [int(c) for c in args.cores.split(",")]
    lines, records, runs = (200_000, 100_000, 1) if args.quick else (4_000_000, 1_500_000, 5)
    folder = tempfile.mkdtemp(prefix="bench-files-")
    try:
        lines_path, jsonl_path = os.path.join(folder, "app.log"), os.path.join(folder, "events.jsonl")
        write_lines(lines_path, lines)
        write_jsonl(jsonl_path, records)
        size = os.path.getsize(lines_path), os.path.getsize(jsonl_path)
        rows = measure(f"{lines:,} lines, {size[0] / 1e6:.0f} MB", lines_path, "lines", plain_lines,
                       lines, cores_list, runs)
        rows += measure(f"{records:,} JSON records, {size[1] / 1e6:.0f} MB", jsonl_path, "jsonl",
                        plain_jsonl, records, cores_list, runs)
    finally:
        shutil.rmtree(folder)
    print(machine())
    print(f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print()
    print(table(f"Files: records/s (median of {runs} runs, interleaved; files in the page cache)",
                ["input", "reader", "cores", "records/s", "per kernel", "vs plain", "vs 1 core",
                 "target", "result"], rows))


if __name__ == "__main__":
    main()
