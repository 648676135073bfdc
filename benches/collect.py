"""What `collect()` costs: the same flow ending in `collect()` and in a
step that drops its batches, on 1 and 2 kernels (issue 13, part 3).

    python -m benches.collect [--quick] [--records N] [--reps R]

Each kernel makes its share of N records itself (`from_partitions`, nothing
crosses `fork`) and maps them to the record shape of the row: plain ints,
`(int, str, float)` tuples, or a windowed aggregate's results, `(key,
Window, sum)`: a key string made for each record (as a window's keys come
from its events), one `Window` for 300 records in a row. "overhead" is
(collect - drop) / N: what gathering the records in each kernel and
handing them to the caller as one list costs, per record. The "pickled" rows send each kernel's list back by
pickle with the rest of its answer, as before the kernels encoded their
results with the codec (`kernel/execution/_results.py`), measured in the same
run (interleaved runs, medians).

On more than one kernel the caller's process decodes every kernel's
records, one kernel after the other, after the kernels have ended: at least
the cost of making each record again (~100-200 ns for a tuple of three new
objects), which no encoding removes.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import time

import kernel.execution._execute as _execute
from benches._report import machine, table
from kernel import Dataflow, Operator, run
from operators import Window


@functools.cache
def _window(number: int) -> Window:
    return Window(float(number), float(number + 1))


def _window_result(x: int) -> tuple:
    return (f"k{x % 1000}", _window(x // 300), x % 10)


SHAPES = {"int": None, "(int, str, float)": lambda x: (x, "w", 1.5), "(str, Window, int)": _window_result}


def _share(records: int):
    def share(index: int, peers: int):
        return range(index, records, peers)

    return share


def one_run(records: int, shape: str, cores: int, end: str) -> float:
    flow = Dataflow("collect bench")
    stream = flow.from_partitions(_share(records))
    if SHAPES[shape] is not None:
        stream = stream.map(SHAPES[shape])
    out = stream.collect() if end != "drop" else None
    if out is None:
        stream.apply(_Drop, name="drop")
    gc.collect()
    start = time.perf_counter()
    run(flow, cores=cores)
    elapsed = time.perf_counter() - start
    if out is not None and len(out.items) != records:
        raise AssertionError(f"{len(out.items)} records collected of {records}")
    return elapsed


class _Drop(Operator):
    """Takes each batch and keeps nothing (a `sink` would call a function
    for every record: ~50 ns a record that collect() does not pay)."""

    def on_batch(self, port, batch) -> None:
        pass


def _pickled(results: dict, names: dict) -> dict:
    return results  # each list goes back by pickle, with the kernel's answer


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20,000 records, one run")
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.reps = 20_000, 1
    if args.records <= 0 or args.reps <= 0:
        parser.error("--records and --reps must be positive ints")
    encoded = _execute.pack_results
    rows = []
    for shape in SHAPES:
        for cores in (1, 2):
            ends = ["drop", "collect"] + (["collect, pickled"] if cores > 1 else [])
            times: dict[str, list[float]] = {end: [] for end in ends}
            for _ in range(args.reps):
                for end in ends:
                    _execute.pack_results = _pickled if end == "collect, pickled" else encoded
                    try:
                        times[end].append(one_run(args.records, shape, cores, end))
                    finally:
                        _execute.pack_results = encoded
            drop = statistics.median(times["drop"])
            for end in ends:
                median = statistics.median(times[end])
                rows.append([shape, cores, end, f"{median * 1000:.0f}",
                             "" if end == "drop" else f"{(median - drop) / args.records * 1e6:.3f}"])
    print(machine())
    print()
    print(table(f"collect() against a step that drops its batches, {args.records:,} records "
                f"(median of {args.reps})",
                ["records", "kernels", "end", "ms", "overhead us/record"], rows))


if __name__ == "__main__":
    main()
