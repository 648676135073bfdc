"""Stateless fusion A/B: chains of map/filter/key_by/map_values (and word
count's flat_map) on one kernel with the fused handler and with every step
apart, interleaved, CPU time of the run (process_time: this machine is
shared, and the run is one kernel in this process).

    python -m benches.fusion [--runs N]
"""

import argparse
import statistics
import time

import kernel.operators._stateless as stateless

from kernel import Dataflow, run

FUSED = stateless._UserFunction.fuse_upstream


def chain(data):
    flow = Dataflow()
    (flow.from_iterable(data).map(lambda x: x + 1).filter(lambda x: x % 3).map(lambda x: x * 2)
     .key_by(lambda x: x % 7).map_values(lambda v: v + 1).sink(lambda record: None))
    return flow


def word_count(lines):
    flow = Dataflow()
    flow.from_iterable(lines).flat_map(str.split).key_by(lambda w: w).count().sink(lambda record: None)
    return flow


def lower_word_count(lines):
    flow = Dataflow()
    (flow.from_iterable(lines).map(str.lower).flat_map(str.split).key_by(lambda w: w).count()
     .sink(lambda record: None))
    return flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small inputs, one run")
    args = parser.parse_args()
    n = 20_000 if args.quick else 1_000_000
    data = list(range(n))
    lines = ["the quick brown fox jumps over the lazy dog " * 2] * (n // 20)
    cases = {"map,filter,map,key_by,map_values": (chain, data), "word count": (word_count, lines),
             "map(str.lower) + word count": (lower_word_count, lines)}
    times: dict = {}
    for _ in range(1 if args.quick else args.runs):
        for name, (make, records) in cases.items():
            for fused in (True, False):
                stateless._UserFunction.fuse_upstream = FUSED if fused else (lambda self, upstream: None)
                flow = make(records)
                start = time.process_time()
                run(flow)
                times.setdefault((name, fused), []).append(time.process_time() - start)
    stateless._UserFunction.fuse_upstream = FUSED
    print(f"| chain ({n:,} records) | fused, CPU s | apart, CPU s | fused / apart |")
    print("|---|---|---|---|")
    for name in cases:
        fused, apart = statistics.median(times[(name, True)]), statistics.median(times[(name, False)])
        print(f"| {name} | {fused:.3f} | {apart:.3f} | {fused / apart:.2f} |")


if __name__ == "__main__":
    main()
