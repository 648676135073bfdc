"""The host's longest wait while a step hands on a large output at once.

    python -m benches.large_outputs            # full sizes, 5 runs each
    python -m benches.large_outputs --quick    # smaller, 3 runs (smoke test)

A pipeline on the host's loop (`await run_async(flow)`, one kernel) beside
a host task that only yields (`await asyncio.sleep(0)`) and notes the
longest time between two of its turns. Each pipeline ends in one large
output at once, the case a source's pacing cannot help with:

* window count, tumbling: 300,000 keys in one window, closed by the end of
  input (300,000 `(key, window, count)` results);
* window count, sessions: 200,000 keys, one session each, closed likewise;
* keyed count: 1,000,000 keys, its results at the end of input;
* windowed join: one key with 1,000 values on the left and 300 on the
  right in one window (300,000 pairs);
* incremental join (no window): the same values, each pairing with those
  of the other side already in as it comes (a batch of values meeting
  hundreds each);
* your operator (`apply()`): one `emit` of N records in its `on_end` (a
  list it made before), a `map` after it (kernel/runtime/_user_pieces.py
  hands such an emit on in pieces).

Beside it, the plain loop that computes the same results: run on the
host's loop it would hold it for all of that time. The kernel's budget is
1 ms and its stall notice 25 ms; a step that makes and hands on such an
output in pieces, one a tick (operators/_calls.py `emit_in_pieces`,
operators/windows/_windowing.py), leaves the host waiting no longer than
a piece, a collection of the run's objects (Python's full collections are
what is left, benches/RESULTS.md) or the source's first polls. With
several kernels the kernels run in processes of their own and the host's
loop waits for none of this.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter

from benches._report import machine, table
from kernel import Dataflow, Operator, run_async
from operators import Session, Tumbling

# Each returns (the flow, its collect(), the plain loop over the same input).


def window_tumbling(n: int):
    events = [(key, 5.0) for key in range(n)]
    flow = Dataflow("tumbling")
    keyed = flow.from_iterable(events, timestamp=_second).key_by(_first)
    out = keyed.window(Tumbling(10.0)).count().collect()
    return flow, out, lambda: list(Counter((key, t // 10.0) for key, t in events).items())


def window_sessions(n: int):
    events = [(key, 5.0) for key in range(n)]
    flow = Dataflow("sessions")
    keyed = flow.from_iterable(events, timestamp=_second).key_by(_first)
    out = keyed.window(Session(10.0)).count().collect()
    return flow, out, lambda: list(Counter(key for key, _ in events).items())  # one event a key: one session


def keyed_count(n: int):
    records = range(n)
    flow = Dataflow("count")
    out = flow.from_iterable(records).key_by(_itself).count().collect()
    return flow, out, lambda: list(Counter(records).items())


def hot_join(n: int):
    lefts = [(0, i) for i in range(max(1, n // 300))]
    rights = [(0, i) for i in range(300)]
    flow = Dataflow("join")
    left = flow.from_iterable(lefts, timestamp=_one).key_by(_first)
    right = flow.from_iterable(rights, timestamp=_one).key_by(_first)
    out = left.join(right, Tumbling(10.0)).collect()
    return flow, out, lambda: [(0, (lv, rv)) for lv in lefts for rv in rights]


def hot_incremental_join(n: int):
    lefts = [(0, i) for i in range(max(1, n // 300))]
    rights = [(0, i) for i in range(300)]
    flow = Dataflow("incremental join")
    out = flow.from_iterable(lefts).key_by(_first).join(flow.from_iterable(rights).key_by(_first)).collect()
    return flow, out, lambda: [(0, (lv, rv)) for lv in lefts for rv in rights]


class _EmitsAtTheEnd(Operator):
    """A user's operator that emits `records`, made before the run, in one
    emit at the end of its input."""

    def __init__(self, records: list) -> None:
        self.records = records

    def on_batch(self, port, batch):
        pass

    def on_end(self):
        self.emit(self.records)


def user_emit(n: int):
    records = list(range(n))
    flow = Dataflow("user emit")
    emits = flow.from_iterable([0]).apply(lambda: _EmitsAtTheEnd(records), name="emits")
    out = emits.map(_plus_one).collect()
    return flow, out, lambda: [_plus_one(x) for x in records]


def _plus_one(x: int) -> int:
    return x + 1


def _first(record):
    return record[0]


def _second(record):
    return record[1]


def _itself(record):
    return record


def _one(_record) -> float:
    return 1.0


CASES = [  # (name, make, size, quick size)
    ("window count, tumbling: one window of N keys", window_tumbling, 300_000, 30_000),
    ("window count, sessions: N keys, a session each", window_sessions, 200_000, 20_000),
    ("keyed count: N keys, results at the end", keyed_count, 1_000_000, 100_000),
    ("windowed join: one key, N pairs in one window", hot_join, 300_000, 30_000),
    ("incremental join: one key, N pairs as values meet", hot_incremental_join, 300_000, 30_000),
    ("your operator: one emit of N records at the end, a map after", user_emit, 1_000_000, 100_000),
]


async def one_run(make, n: int) -> tuple[float, float, list]:
    """(the host's longest wait in s, the run's wall s, its results) of one run."""
    flow, out, _ = make(n)
    longest, running = [0.0], True

    async def host():
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0)
            now = time.perf_counter()
            longest[0] = max(longest[0], now - last)
            last = now

    task = asyncio.create_task(host())
    await asyncio.sleep(0)
    started = time.perf_counter()
    await run_async(flow)
    wall = time.perf_counter() - started
    running = False
    await task
    return longest[0], wall, out.items


def plain_seconds(make, n: int) -> float:
    _, _, plain = make(n)
    started = time.perf_counter()
    plain()
    return time.perf_counter() - started


def results_checked(name: str, items: list, plain: list) -> None:
    """Each run's results are the plain loop's (the windows' `(key, window,
    count)` as the plain loop's `((key, slot), count)` or `(key, count)`)."""
    if items and isinstance(items[0], tuple) and len(items[0]) == 3:  # (key, window, result)
        if name.startswith("window count, tumbling"):
            items = [((key, window.start // 10.0), count) for key, window, count in items]
        elif name.startswith("window count, sessions"):
            items = [(key, count) for key, _, count in items]
        else:  # a windowed join: (key, window, pair)
            items = [(key, pair) for key, _, pair in items]
    assert sorted(items) == sorted(plain), f"{name}: not the plain loop's results"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller outputs, 3 runs")
    parser.add_argument("--size", type=int, default=None, help="N of every case (default: each case's own)")
    parser.add_argument("--reps", type=int, default=None, help="runs of each case (default 5; --quick 3)")
    args = parser.parse_args(argv)
    if (args.reps is not None and args.reps < 1) or (args.size is not None and args.size < 1):
        parser.error("--reps and --size must be positive")
    reps = args.reps or (3 if args.quick else 5)
    rows = []
    for name, make, size, quick in CASES:
        n = args.size or (quick if args.quick else size)
        runs = [asyncio.run(one_run(make, n)) for _ in range(reps)]
        plain = make(n)[2]()
        for _, _, items in runs:
            results_checked(name, items, plain)
        plain = statistics.median(plain_seconds(make, n) for _ in range(reps))
        waits = [wait * 1e3 for wait, _, _ in runs]
        rows.append([name.replace("N", f"{n:,}"), round(statistics.median(waits), 1), round(max(waits), 1),
                     round(statistics.median(wall for _, wall, _ in runs) * 1e3), round(plain * 1e3, 1)])
    print(machine())
    print()
    print(table(f"The host's longest wait while a large output goes on (one kernel on its loop, "
                f"median of {reps})",
                ["pipeline", "host's longest wait, ms", "worst run, ms", "run, ms",
                 "plain loop, ms (holds the loop throughout)"], rows))


if __name__ == "__main__":
    main()
