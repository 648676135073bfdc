"""Pipeline throughput: word count, a CPU-heavy map and a windowed sum, vs a plain loop and Bytewax.

    python -m benches.pipelines                 # full run (well under a minute)
    python -m benches.pipelines --quick         # smoke test
    python -m benches.pipelines --cores 1,2     # rows per kernel count

Word count: 200,000 lines of 10 words drawn (seeded) from a 10,000-word
vocabulary, counted three ways, and the three results are checked equal:

* plain: the dict loop a user would write instead of a dataflow;
* ours: `from_iterable(lines).flat_map(str.split).key_by(...).count().collect()`
  run with `kernel.run(flow, cores=N)`;
* Bytewax 0.21 (when installed): `flat_map` + `count_final` under `run_main`.

CPU-heavy map: every record sums 200 squares in pure Python (~5-10 us), so the
per-record overhead of the framework is negligible and a multi-core run can
only win by running user code in parallel: its "vs 1 core" column is the
speed-up (target on 2 cores: >= 1.7x). For each core count N > 1 it is
measured, in the same interleaved runs, beside two hand-made alternatives:

* machine ceiling: N forked processes, each pinned to its own CPU (the CPUs
  our launcher picks) and running the plain list comprehension over its share
  `records[i::N]`, the results sent back through a pipe and combined: the best
  a hand-written fork-per-core program does on this machine. Shared vCPUs do
  not give N times one core (the 2-vCPU KVM box gave 1.4x to 1.9x from one
  full run to the next), so the ceiling's own "vs 1 core" (against the plain
  loop) shows what the machine allowed during the run, and our "vs ceiling"
  column shows how much of that we reached;
* `multiprocessing.Pool(N).map(heavy, records)` (fork context, pool start-up
  timed, as our run starts its processes too): what a user would reach for.

Windowed sum: 200,000 events `(key, t, value)` over 1,000 keys, about 1,000
events per second of event time, each up to 0.5 s out of order (seeded),
summed per key in 1-second tumbling windows, three ways, results checked
equal (and no event may be late):

* plain: `sums[(key, floor(t))] += value` over the events;
* ours: `from_iterable(events, timestamp=..., max_delay=0.5).key_by(...)
  .map_values(...).window(Tumbling(1.0)).sum().collect()`;
* Bytewax 0.21 (when installed): `fold_window` with an `EventClock`
  (`wait_for_system_duration` 0.5 s) and a `TumblingWindower` of 1 s aligned
  to the epoch, `ordered=False` (its faster mode: a sum needs no timestamp
  order), the events' datetimes built before the timed region; its `.late`
  stream must stay empty.
  Target: ours on one core at >= 10x Bytewax's events/s ("n/a" without Bytewax).

Word count on several cores pre-aggregates per kernel before the exchange
(one `(word, n)` per distinct word and kernel crosses a ring). The windowed
sum's keys hardly repeat within a window (~1.6 events per key and window), so
its kernels pass their events on to the owners unaggregated; its 2-core row
stays below the 1-core one. Issue 13 measured why (CPU time per step,
timers around each batch, benches/RESULTS.md): the two kernels together
spend ~2.5x the CPU of one kernel's whole run. The window work itself
halves, but each kernel also pays ~20 ms of copy-on-write faults slicing its
share of the forked input (record i is on kernel i % N, so every page of
the events is copied in both kernels; more such faults hide in the steps
that read the events' fields), ~40 ms of exchange (split by owner, encode,
decode), ~12-24 ms encoding its ~31,000 results for the caller, which then
decodes both kernels' one after the other (~10 ms each), and a young
collection over those results. (The results went by pickle then; they go
as msgpack columns now, `net/_codec.py`: 2 kernels 0.55-0.57x -> 0.60x of
one on a faster day, benches/RESULTS.md, seventh session.)

Beside word count and the windowed sum, two rows of what a user could
write by hand instead of a flow, in the same interleaved runs, results
checked equal:

* "batched loop, the flow's functions": the flow's own work in a plain
  loop over batches of the kernel's size, calling the flow's functions as
  the kernel must (`word_key` per word; `_event_time`, `_event_key`,
  `_event_value` per event) and, for the windowed sum, emitting
  `(key, Window, sum)` triples as windows close. This is as fast as one
  kernel can get when it must call them: the plain loop inlines what the
  flow calls, ~25 ns a call, which is most of the gap between ours and it
  (eighth session: ours at 99% of this row on word count and 88-97% on
  the windowed sum). These four functions only read their record
  (`return e[0]`, `return word`), so the kernel no longer calls them: it
  reads the field in C (`operators/_accessors.py`) and passes this row;
* "ours, its functions called": ours on one kernel with the same
  functions written so that they are not plain reads (an unused second
  parameter), called per record as a function that does work would be;
* "plain loop in forked processes, merged" (N > 1): the plain loop over
  `data[i::N]` in N forked, pinned processes, each result sent back by a
  pipe and merged (dicts added key by key): map-reduce by hand. Its "vs 1
  core" is against the plain loop. For the windowed sum it is *slower* on 2
  cores than on 1 (0.34x, benches/RESULTS.md): each process's ~79,000
  partial sums must come back and be merged, and its half of the events
  costs less than that. Ours on 2 kernels, 0.38x of the plain loop in that
  run, beats it.

Select pipelines with `--only wordcount,heavy,windows` and the number of
runs with `--reps N`.

Figures are medians over several runs, each timed from a freshly collected
heap (`gc.collect()` before it, untimed): the benchmark machine is a shared,
noisy 2-core box.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import math
import multiprocessing
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from itertools import chain
from multiprocessing.connection import wait

from benches._report import machine, parallel_ceiling, table
from kernel import Dataflow, run
from kernel.dataflow._operator import DEFAULT_BATCH_SIZE as BATCH
from kernel.execution._cores import _cpus_for
from operators import Tumbling, Window

VOCABULARY = 10_000
WORDS_PER_LINE = 10
TARGET_VS_PLAIN = 0.5  # ours must reach at least half the plain loop's rate
TARGET_SPEEDUP_2_CORES = 1.7  # CPU-heavy map on 2 kernels vs 1
TARGET_VS_BYTEWAX_WINDOWS = 10.0  # windowed sum, ours on 1 core vs Bytewax fold_window
WINDOW_KEYS = 1_000
EPOCH_BASE = 1_700_000_000.0  # event times in seconds since the epoch
PIPELINES = ("wordcount", "heavy", "windows")  # --only


def add_only_argument(parser: argparse.ArgumentParser) -> None:
    """`--only`: which of PIPELINES to run (this benchmark's and benches/metrics.py's)."""
    parser.add_argument("--only", default=",".join(PIPELINES),
                        help=f"comma-separated pipelines to run, of {', '.join(PIPELINES)} (default: all)")


def selected_pipelines(parser: argparse.ArgumentParser, text: str) -> list[str]:
    """The pipelines `--only` names; anything else is a usage error."""
    only = [name.strip() for name in text.split(",") if name.strip()]
    if not only or set(only) - set(PIPELINES):
        parser.error(f"--only takes some of {', '.join(PIPELINES)}, got {text!r}")
    return only


def make_lines(n: int, words: int = WORDS_PER_LINE) -> list[str]:
    """`n` lines of `words` words each, from a 10,000-word vocabulary, seeded
    (benches/latency.py and benches/embedded.py count 13-word lines)."""
    rng = random.Random(42)
    vocabulary = [f"w{i}" for i in range(VOCABULARY)]
    return [" ".join(rng.choices(vocabulary, k=words)) for _ in range(n)]


# Module-level functions rather than lambdas: a multi-core run has to ship
# them to other processes, and a lambda does not pickle.
def word_key(word: str) -> str:
    return word


def word_key_called(word: str, _not_a_plain_read=None) -> str:
    """`word_key` as a function the kernel calls per word (a second
    parameter: not a plain read, `operators/_accessors.py`)."""
    return word


def heavy(x: int) -> int:
    """~5-10 us of pure-Python work (the GIL-bound kind multi-core should spread)."""
    return x + sum([i * i for i in range(200)])


# -- word count ------------------------------------------------------------------


def plain_wordcount(lines: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in lines:
        for w in line.split():
            counts[w] = counts.get(w, 0) + 1
    return counts


def batched_wordcount(lines: list[str]) -> dict[str, int]:
    """Word count as our flow runs it, written by hand: batches of the
    kernel's default size, `str.split` and the flow's key function
    `word_key` called on every word, counted by C code (`Counter.update`).
    It pays what the plain loop does not: a call of the user's key function
    per word."""
    counts: Counter = Counter()
    for start in range(0, len(lines), BATCH):
        words = list(chain.from_iterable(map(str.split, lines[start : start + BATCH])))
        counts.update(map(word_key, words))
    return dict(counts)


def ours_wordcount(lines: list[str], cores: int, key=word_key) -> dict[str, int]:
    flow = Dataflow("wordcount")
    out = flow.from_iterable(lines).flat_map(str.split).key_by(key).count().collect()
    run(flow, cores=cores)
    return dict(out.items)


def bytewax_wordcount(lines: list[str]) -> dict[str, int]:
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow as BytewaxFlow
    from bytewax.testing import TestingSink, TestingSource, run_main

    out: list = []
    flow = BytewaxFlow("wordcount")
    # batch_size=1024 as ours (TestingSource defaults to 1 record per batch,
    # which makes Bytewax a further ~1.5x slower here).
    inp = op.input("lines", flow, TestingSource(lines, batch_size=1024))
    words = op.flat_map("split", inp, str.split)
    counts = op.count_final("count", words, key=word_key)
    op.output("out", counts, TestingSink(out))
    run_main(flow)
    return dict(out)


def bytewax_available() -> bool:
    return importlib.util.find_spec("bytewax") is not None


# -- CPU-heavy map -----------------------------------------------------------------


def plain_heavy(records: range) -> list[int]:
    return [heavy(x) for x in records]


def ours_heavy(records: range, cores: int) -> list[int]:
    flow = Dataflow("heavy")
    out = flow.from_iterable(records).map(heavy).collect()
    run(flow, cores=cores)
    return out.items


def _forked_worker(loop: Callable, share, cpu: int, sender) -> None:
    os.sched_setaffinity(0, {cpu})
    sender.send(loop(share))


def forked_plain(loop: Callable, data, cores: int, merge: Callable) -> object:
    """`loop` over `data[i::cores]` in `cores` forked processes pinned as our
    kernels are (each reads its share of the inherited input, as ours do),
    each process's result sent back by a pipe (pickled) and the results
    merged in this one: `merge(results)`, in the order they finish. What a
    user would write by hand to put a plain loop on several cores."""
    context = multiprocessing.get_context("fork")
    children, pending = [], []
    for i, cpu in enumerate(_cpus_for(cores)):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_forked_worker, args=(loop, data[i::cores], cpu, sender))
        child.start()
        sender.close()
        children.append(child)
        pending.append(receiver)
    results: list = []
    while pending:  # whichever finishes first, so that no child waits on a full pipe
        for receiver in wait(pending):
            results.append(receiver.recv())
            receiver.close()
            pending.remove(receiver)
    for child in children:
        child.join()
    return merge(results)


def concatenated(parts: list[list]) -> list:
    return [item for part in parts for item in part]


def summed(parts: list[dict]) -> dict:
    """Dicts of numbers merged by key, values added."""
    total = parts[0]
    for part in parts[1:]:
        get = total.get
        for key, value in part.items():
            total[key] = get(key, 0) + value
    return total


def ceiling_heavy(records: range, cores: int) -> list[int]:
    """The plain loop in `cores` forked processes pinned as our kernels are."""
    return forked_plain(plain_heavy, records, cores, concatenated)


def pool_heavy(records: range, cores: int) -> list[int]:
    with multiprocessing.get_context("fork").Pool(cores) as pool:
        # Pool.map's own default chunk size (4 chunks per worker), spelled out.
        return pool.map(heavy, records, chunksize=max(1, len(records) // (4 * cores)))


# -- windowed sum --------------------------------------------------------------------


def make_events(n: int) -> list[tuple[str, float, int]]:
    rng = random.Random(11)
    return [
        (f"k{rng.randrange(WINDOW_KEYS)}", EPOCH_BASE + i * 0.001 + rng.uniform(0.0, 0.5), rng.randrange(10))
        for i in range(n)
    ]


def plain_window_sums(events: list) -> dict[tuple[str, float], int]:
    sums: dict = {}
    floor = math.floor
    for key, t, value in events:
        slot = (key, float(floor(t)))
        sums[slot] = sums.get(slot, 0) + value
    return sums


def batched_window_sums(events: list) -> list:
    """The windowed sum as our flow runs it, written by hand: batches of the
    kernel's default size; the flow's three functions (`_event_time`,
    `_event_key`, `_event_value`) called on every event; the watermark
    (largest time so far less 0.5 s) checked after each batch; results as
    ours are, `(key, Window, sum)` triples, one `Window` per window. What
    it pays beyond the plain loop is those calls and those triples."""
    sums: dict[int, dict] = {}
    out: list = []
    watermark = -math.inf
    floor = math.floor
    for start in range(0, len(events), BATCH):
        batch = events[start : start + BATCH]
        stamps = list(map(_event_time, batch))
        for key, value, t in zip(map(_event_key, batch), map(_event_value, batch), stamps):
            keyed = sums.get(j := floor(t))
            if keyed is None:
                keyed = sums[j] = {}
            keyed[key] = keyed.get(key, 0) + value
        watermark = max(watermark, max(stamps) - 0.5)
        for j in sorted(j for j in sums if j + 1 <= watermark):
            window = Window(float(j), float(j + 1))
            out += [(key, window, total) for key, total in sums.pop(j).items()]
    for j in sorted(sums):
        window = Window(float(j), float(j + 1))
        out += [(key, window, total) for key, total in sums.pop(j).items()]
    return out


def ours_window_sums(events: list, cores: int, called: bool = False) -> list:
    """The `(key, window, sum)` triples, as the engine gives them to the
    caller. Turning them into the plain loop's dict is the check's work, not
    timed (as for Bytewax): with 126,000 results it is ~90 ms, most of it the
    collections that building 126,000 tuples sets off in the caller's heap,
    half of a one-kernel run."""
    time_of, key_of, value_of = ((_event_time_called, _event_key_called, _event_value_called) if called
                                 else (_event_time, _event_key, _event_value))
    flow = Dataflow("windowed-sum")
    sums = (flow.from_iterable(events, timestamp=time_of, max_delay=0.5)
                .key_by(key_of).map_values(value_of)
                .window(Tumbling(1.0)).sum())
    out = sums.collect()
    run(flow, cores=cores)
    assert sums.late_count.value == 0, f"{sums.late_count.value} late events"
    return out.items


def sums_by_slot(triples: list) -> dict[tuple[str, float], int]:
    """`(key, window, sum)` triples as the plain loop's `{(key, start): sum}`."""
    return {(key, window.start): total for key, window, total in triples}


def _event_time(event) -> float:
    return event[1]


def _event_key(event) -> str:
    return event[0]


def _event_value(event) -> int:
    return event[2]


# The same as functions the kernel calls per event (a second parameter: not
# plain reads, operators/_accessors.py), for the "functions called" row.
def _event_time_called(event, _not_a_plain_read=None) -> float:
    return event[1]


def _event_key_called(event, _not_a_plain_read=None) -> str:
    return event[0]


def _event_value_called(event, _not_a_plain_read=None) -> int:
    return event[2]


def bytewax_events(events: list) -> list:
    utc = datetime.UTC
    return [(key, datetime.datetime.fromtimestamp(t, utc), value) for key, t, value in events]


def bytewax_window_sums(events: list) -> list:
    """Bytewax's `(key, (window id, sum))` output (`bytewax_by_slot` checks it)."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow as BytewaxFlow
    from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
    from bytewax.testing import TestingSink, TestingSource, run_main

    utc = datetime.UTC
    out: list = []
    late: list = []
    flow = BytewaxFlow("windowed_sum")
    inp = op.input("events", flow, TestingSource(events, batch_size=1024))
    keyed = op.key_on("key", inp, _event_key)
    clock = EventClock(ts_getter=lambda e: e[1], wait_for_system_duration=datetime.timedelta(seconds=0.5))
    windower = TumblingWindower(length=datetime.timedelta(seconds=1),
                                align_to=datetime.datetime(1970, 1, 1, tzinfo=utc))
    # ordered=False: a sum does not need timestamp order, and skipping the
    # sort makes Bytewax ~5-15% faster (the default, ordered=True, is slower).
    windowed = fold_window("sum", keyed, clock, windower, builder=lambda: 0,
                           folder=lambda acc, e: acc + e[2], merger=lambda a, b: a + b, ordered=False)
    # fold_window emits (key, (window_id, total)) on .down; window metadata
    # comes on .meta (not needed: the id gives the start) and late events on .late.
    op.output("out", windowed.down, TestingSink(out))
    op.output("late", windowed.late, TestingSink(late))
    run_main(flow)
    assert not late, f"Bytewax found {len(late)} events late"
    return out


def bytewax_by_slot(out: list) -> dict[tuple[str, float], int]:
    # window id k of 1-second windows aligned to the epoch starts at k seconds
    return {(key, float(window_id)): total for key, (window_id, total) in out}


# -- measuring ---------------------------------------------------------------------


def timed_rate(units: int, fn: Callable[[], object], expected: Callable[[object], bool]) -> float:
    """units/s of one run of `fn`, whose result is checked.

    The heap is collected first (untimed), so that no run pays for the
    garbage an earlier run left: a finished flow's results are freed only by
    the cyclic collector (the `Dataflow` and its `collect()` handles refer to
    each other), and the windowed sum's ~126,000 result triples stay
    GC-tracked (a `Window` is a named tuple), so the full collection that
    each windowed-sum run triggers walked the last run's triples too (30-120
    ms, against ~35 ms on a clean heap)."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    elapsed = time.perf_counter() - start
    assert expected(result), "results differ from the plain loop's"
    return units / elapsed


def interleaved_rates(reps: int, units: int, fns: dict[str, Callable[[], object]],
                      expected: Callable[[object], bool]) -> dict[str, float]:
    """Median units/s per entry of `fns`.

    The runs are taken in turn (plain, ours, plain, ours...) rather than all
    of one then all of the other, so that a slow stretch of the shared
    machine hits every engine alike and the ratios stay meaningful.
    """
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            runs[name].append(timed_rate(units, fn, expected))
    return {name: statistics.median(values) for name, values in runs.items()}


def row(name: str, engine: str, cores: int, value: float, plain: float, one_core: float | None = None,
        target: str = "", passed: bool | None = None, ceiling: float | None = None) -> list[object]:
    """A table row; `one_core` gives the speed-up column for multi-core rows,
    `ceiling` the fraction of the machine ceiling reached."""
    speedup = f"{value / one_core:.2f}x" if one_core and cores > 1 else ""
    vs_ceiling = f"{value / ceiling:.0%}" if ceiling else ""
    verdict = "" if passed is None else ("PASS" if passed else "FAIL")
    return [name, engine, cores, value, f"{value / plain:.0%}", speedup, vs_ceiling, target, verdict]


def ours_rows(name: str, rates: dict[str, float], cores_list: list[int], plain: float,
              targets: dict[int, tuple[str, Callable[[float, float], bool]]]) -> list[list[object]]:
    """Rows for our engine on each core count. `targets[cores]` is (text,
    check(rate, one_core_rate)) for the rows that have a target; a rate
    `ceiling{cores}` in `rates` fills the "vs ceiling" column."""
    one_core = rates.get("ours1")
    rows = []
    for cores in cores_list:
        rate = rates[f"ours{cores}"]
        text, check = targets.get(cores, ("", None))
        passed = None if check is None else check(rate, one_core or rate)
        rows.append(row(name, "ours: kernel.run(flow)", cores, rate, plain, one_core, text, passed,
                        rates.get(f"ceiling{cores}")))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    parser.add_argument("--cores", default="1", help="comma-separated kernel counts, e.g. 1,2 (default 1)")
    parser.add_argument("--no-bytewax", action="store_true", help="skip the Bytewax row")
    add_only_argument(parser)
    parser.add_argument("--reps", type=int, default=None, help="runs of each engine (default 7; --quick 3)")
    args = parser.parse_args(argv)
    cores_list = sorted({int(c) for c in args.cores.split(",") if c.strip()} | {1})
    only = selected_pipelines(parser, args.only)
    if args.quick:
        n_lines, n_heavy, n_events, reps, bytewax_reps = 20_000, 2_000, 20_000, 3, 1
    else:
        n_lines, n_heavy, n_events, reps, bytewax_reps = 200_000, 100_000, 200_000, 7, 3
    if args.reps is not None:
        if args.reps < 1:
            parser.error(f"--reps must be at least 1, got {args.reps}")
        reps = args.reps

    print(machine())
    print()

    ceilings: dict[int, list[float]] = {c: [] for c in cores_list if c > 1}

    def sample_ceilings() -> None:
        for c, found in ceilings.items():
            found.append(parallel_ceiling(c))

    rows: list[list[object]] = []
    if "wordcount" in only:
        sample_ceilings()
        rows += wordcount_rows(args, cores_list, n_lines, reps, bytewax_reps)
    if "heavy" in only:
        sample_ceilings()
        rows += heavy_rows(cores_list, n_heavy, reps)
    if "windows" in only:
        sample_ceilings()
        rows += window_rows(args, cores_list, n_events, reps, bytewax_reps)
    sample_ceilings()
    print(table(
        f"Pipelines: throughput (median of {reps} runs; Bytewax {bytewax_reps}); word count in lines/s, "
        "CPU-heavy map in records/s, windowed sum in events/s",
        ["pipeline", "engine", "cores", "per second", "vs plain", "vs 1 core", "vs ceiling", "target",
         "result"],
        rows,
    ))
    for c, found in ceilings.items():
        # what "vs 1 core" could be at best on this machine meanwhile
        # (benches/RESULTS.md: this VM's vCPUs sometimes halve their speed
        # whenever both are busy)
        print(f"\nmachine, {c} vs 1 (a plain loop in {c} pinned processes against one, "
              f"before each pipeline and after): median {statistics.median(found):.2f}x, "
              f"{min(found):.2f}x-{max(found):.2f}x")


def by_hand_rows(name: str, rates: dict[str, float], cores_list: list[int], plain: float) -> list:
    """The rows of what a user could write by hand instead: the batched
    loop calling the flow's functions (the most our one kernel can reach
    when it must call them; then ours with functions it calls),
    and the plain loop on several cores in forked processes, merged (its
    "vs 1 core" is against the plain loop on one)."""
    rows = [row(name, "batched loop, the flow's functions", 1, rates["batched"], plain),
            row(name, "ours, its functions called", 1, rates["called"], plain)]
    for cores in cores_list[1:]:
        rows.append(row(name, "plain loop in forked processes, merged", cores, rates[f"forked{cores}"],
                        plain, plain))
    return rows


def wordcount_rows(args, cores_list: list[int], n_lines: int, reps: int, bytewax_reps: int) -> list:
    lines = make_lines(n_lines)
    reference = plain_wordcount(lines)
    assert sum(reference.values()) == n_lines * WORDS_PER_LINE

    def same_counts(result) -> bool:
        return result == reference

    fns: dict[str, Callable[[], object]] = {"plain": lambda: plain_wordcount(lines),
                                            "batched": lambda: batched_wordcount(lines),
                                            "called": lambda: ours_wordcount(lines, 1, word_key_called)}
    for cores in cores_list:
        fns[f"ours{cores}"] = lambda cores=cores: ours_wordcount(lines, cores)
    for cores in cores_list[1:]:
        fns[f"forked{cores}"] = lambda cores=cores: forked_plain(plain_wordcount, lines, cores, summed)
    wc = interleaved_rates(reps, n_lines, fns, same_counts)
    name = f"word count, {n_lines:,} lines x {WORDS_PER_LINE} words"
    plain = wc["plain"]
    rows = [row(name, "plain dict loop", 1, plain, plain), *by_hand_rows(name, wc, cores_list, plain)]
    rows += ours_rows(name, wc, cores_list, plain, {
        1: (f">= {TARGET_VS_PLAIN:.0%} of plain", lambda rate, _: rate >= TARGET_VS_PLAIN * plain),
    })
    if args.no_bytewax or not bytewax_available():
        why = "skipped" if args.no_bytewax else "not installed"
        rows.append([name, "Bytewax 0.21 run_main", 1, why, "", "", "", "", ""])
    else:
        # Fewer runs: one takes ~10x as long as ours.
        bw = interleaved_rates(bytewax_reps, n_lines, {"bw": lambda: bytewax_wordcount(lines)}, same_counts)
        rows.append(row(name, "Bytewax 0.21 run_main", 1, bw["bw"], plain))

    return rows


def heavy_rows(cores_list: list[int], n_heavy: int, reps: int) -> list:
    records = range(n_heavy)
    heavy_reference = plain_heavy(records)

    def same_records(result) -> bool:
        # sorted: with several kernels the output order is not the input order
        return sorted(result) == heavy_reference

    fns = {"plain": lambda: plain_heavy(records)}
    multi = [cores for cores in cores_list if cores > 1]
    for cores in cores_list:
        fns[f"ours{cores}"] = lambda cores=cores: ours_heavy(records, cores)
    for cores in multi:
        fns[f"ceiling{cores}"] = lambda cores=cores: ceiling_heavy(records, cores)
        fns[f"pool{cores}"] = lambda cores=cores: pool_heavy(records, cores)
    hv = interleaved_rates(reps, n_heavy, fns, same_records)
    name = f"CPU-heavy map, {n_heavy:,} records x sum of 200 squares"
    plain = hv["plain"]
    rows = [row(name, "plain list comprehension", 1, plain, plain)]
    rows += ours_rows(name, hv, cores_list, plain, {
        2: (f">= {TARGET_SPEEDUP_2_CORES}x 1 core", lambda rate, one: rate >= TARGET_SPEEDUP_2_CORES * one),
    })
    # The alternatives' "vs 1 core" is against the plain loop, their own 1-core form.
    for cores in multi:
        rows.append(row(name, "machine ceiling: fork+pin plain loop", cores,
                        hv[f"ceiling{cores}"], plain, plain))
        rows.append(row(name, "multiprocessing.Pool(N).map", cores, hv[f"pool{cores}"], plain, plain))

    return rows


def window_rows(args, cores_list: list[int], n_events: int, reps: int, bytewax_reps: int) -> list:
    events = make_events(n_events)
    window_reference = plain_window_sums(events)

    def same_sums(result) -> bool:
        return (result if type(result) is dict else sums_by_slot(result)) == window_reference

    fns = {"plain": lambda: plain_window_sums(events), "batched": lambda: batched_window_sums(events),
           "called": lambda: ours_window_sums(events, 1, called=True)}
    for cores in cores_list:
        fns[f"ours{cores}"] = lambda cores=cores: ours_window_sums(events, cores)
    for cores in cores_list[1:]:
        fns[f"forked{cores}"] = lambda cores=cores: forked_plain(plain_window_sums, events, cores, summed)
    ws = interleaved_rates(reps, n_events, fns, same_sums)
    name = f"windowed sum, {n_events:,} events, {WINDOW_KEYS:,} keys, 1 s tumbling"
    plain = ws["plain"]
    rows = [row(name, "plain dict loop", 1, plain, plain), *by_hand_rows(name, ws, cores_list, plain)]
    if args.no_bytewax or not bytewax_available():
        why = "skipped" if args.no_bytewax else "not installed"
        rows += ours_rows(name, ws, cores_list, plain, {
            1: (f">= {TARGET_VS_BYTEWAX_WINDOWS:.0f}x Bytewax", None),
        })
        rows[-len(cores_list)][-1] = "n/a"  # the 1-core row: no Bytewax to compare with
        rows.append([name, "Bytewax 0.21 fold_window", 1, why, "", "", "", "", ""])
    else:
        bw_events = bytewax_events(events)
        bw = interleaved_rates(bytewax_reps, n_events, {"bw": lambda: bytewax_window_sums(bw_events)},
                               lambda out: bytewax_by_slot(out) == window_reference)["bw"]
        target = f">= {TARGET_VS_BYTEWAX_WINDOWS:.0f}x Bytewax ({ws['ours1'] / bw:.1f}x)"
        rows += ours_rows(name, ws, cores_list, plain, {
            1: (target, lambda rate, _: rate >= TARGET_VS_BYTEWAX_WINDOWS * bw),
        })
        rows.append(row(name, "Bytewax 0.21 fold_window", 1, bw, plain))
    return rows


if __name__ == "__main__":
    main()
