"""Flow control for loops (Faucet, `iterate(..., max_in_flight=N)`): memory.

    python -m benches.faucet            # 20,000 records of 16 KB a kernel
    python -m benches.faucet --quick    # 2,000 (smoke test)

The timely book's example, scaled down: a source makes R records of 16 KB a
kernel, lazily (`from_partitions` with a generator), and each fans out 4
ways a round for 3 rounds (64 small leaves a record) in a loop. Without flow
control the source runs ahead of the loop and the whole input waits at its
entry (R x 16 KB a kernel); with `max_in_flight=N` a kernel's sources pause
while N records wait. A third setting gives the records event time with a
watermark that lags the whole input (`max_delay` 1e12): no run takes a record
in by its time before the input ends, so with N waiting the runs take them
in early. For each setting and number of kernels: the peak growth of each
kernel's resident memory during the run
(sampled at every batch inside the loop, against its size when the flow
opened; the largest over the kernels; each run in a fresh interpreter, so
that no earlier run's freed heap hides the growth), the peak number of records waiting
before the loop on a kernel, and the wall seconds. Every run's leaves are
checked against the plain count (64 a record).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benches._report import machine, table
from kernel import Dataflow, Operator, run

PAYLOAD = 16 * 1024
WAYS, DEPTH = 4, 3
# per kernel process: [handed on, taken in, peak waiting, rss at open, peak rss]
_COUNTS: dict[int, list] = {}


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _HandedOn(Operator):
    """Before the loop: what goes to its entry; the peak waiting there."""

    def open(self, context):
        rss = _rss()
        self.counts = _COUNTS[context.index] = [0, 0, 0, rss, rss]

    def on_batch(self, port, batch):
        counts = self.counts
        counts[0] += len(batch)
        counts[2] = max(counts[2], counts[0] - counts[1])
        self.emit(batch)


class _TakenIn(Operator):
    """Inside the loop: round-0 records (depth DEPTH); samples the memory."""

    def open(self, context):
        self.counts = _COUNTS[context.index]

    def on_batch(self, port, batch):
        counts = self.counts
        counts[1] += sum(1 for record in batch if record[1] == DEPTH)
        counts[4] = max(counts[4], _rss())


class _Report(Operator):
    def open(self, context):
        self.counts = _COUNTS[context.index]

    def on_batch(self, port, batch):
        self.emit([len(batch)])  # leaves, counted

    def on_end(self):
        counts = self.counts
        self.emit([("report", counts[2], counts[4] - counts[3])])


def measure(records: int, max_in_flight: int | None, cores: int,
            lagging: bool = False) -> tuple[int, int, float]:
    """(peak records waiting on a kernel, peak memory growth of a kernel in
    bytes, wall seconds) of one run; `lagging`: event time, the watermark
    a whole input behind."""
    def make(index, peers):
        return ((index * records + i, DEPTH, str(i).rjust(PAYLOAD)) for i in range(records))

    def body(nodes):
        children = nodes.filter(lambda v: v[1] > 0).flat_map(lambda v: [(v[0], v[1] - 1, None)] * WAYS)
        nodes.apply(_TakenIn)
        return children, nodes.filter(lambda v: v[1] == 0)

    flow = Dataflow("faucet")
    timed = {"timestamp": lambda r: float(r[0]), "max_delay": 1e12} if lagging else {}
    source = flow.from_partitions(make, batch_size=64, **timed).apply(_HandedOn)
    out = source.iterate(body, max_in_flight=max_in_flight).apply(_Report).collect()
    start = time.perf_counter()
    run(flow, cores=cores)
    seconds = time.perf_counter() - start
    reports = [item for item in out.items if isinstance(item, tuple)]
    leaves = sum(item for item in out.items if not isinstance(item, tuple))
    if leaves != records * cores * WAYS ** DEPTH or len(reports) != cores:
        raise AssertionError(f"{leaves} leaves from {len(reports)} kernels, expected "
                             f"{records * cores * WAYS ** DEPTH} from {cores}")
    return max(r[1] for r in reports), max(r[2] for r in reports), seconds


def measure_fresh(records: int, max_in_flight: int | None, cores: int,
                  lagging: bool = False) -> tuple[int, int, float]:
    """`measure` in a new interpreter."""
    done = subprocess.run(
        [sys.executable, "-m", "benches.faucet", "--measure",
         json.dumps([records, max_in_flight, cores, lagging])],
        capture_output=True, text=True, check=True)
    return tuple(json.loads(done.stdout.splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 records a kernel (smoke test)")
    parser.add_argument("--records", type=int, default=None, help="records a kernel (20,000)")
    parser.add_argument("--max-in-flight", type=int, default=100, help="N for the bounded runs (100)")
    # one run: [records, max_in_flight, cores, lagging]
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*json.loads(args.measure))))
        return
    if args.records is not None and args.records < 1:
        parser.error("--records must be a positive int")
    if args.max_in_flight < 1:
        parser.error("--max-in-flight must be a positive int")
    records = args.records or (2_000 if args.quick else 20_000)
    print(f"{machine()}; {records:,} records of {PAYLOAD // 1024} KB a kernel, "
          f"each {WAYS ** DEPTH} leaves ({WAYS} ways, {DEPTH} rounds)")
    rows = []
    for cores in (1, 2):
        for limit, lagging in ((None, False), (args.max_in_flight, False), (args.max_in_flight, True)):
            waiting, growth, seconds = measure_fresh(records, limit, cores, lagging)
            setting = "none" if limit is None else f"max_in_flight={limit}"
            rows.append([cores, setting + (", watermark behind" if lagging else ""),
                         f"{waiting:,}", f"{growth / 2**20:.1f}", f"{seconds:.2f}"])
    print(table("A loop whose input would flood memory",
                ["kernels", "flow control", "peak records waiting (a kernel)",
                 "peak memory growth (MB, a kernel)", "wall s"], rows))


if __name__ == "__main__":
    main()
