"""Pipeline throughput: word count and a CPU-heavy map, vs a plain loop and Bytewax.

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
only win by running user code in parallel (the figure to watch once
`cores > 1` exists).

Figures are medians over several runs: the benchmark machine is a shared,
noisy 2-core box.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import time
from collections.abc import Callable

from benches._report import machine, table
from kernel import Dataflow, run

VOCABULARY = 10_000
WORDS_PER_LINE = 10
TARGET_VS_PLAIN = 0.5  # ours must reach at least half the plain loop's rate


def make_lines(n: int) -> list[str]:
    rng = random.Random(42)
    vocabulary = [f"w{i}" for i in range(VOCABULARY)]
    return [" ".join(rng.choices(vocabulary, k=WORDS_PER_LINE)) for _ in range(n)]


# Module-level functions rather than lambdas: a multi-core run has to ship
# them to other processes, and a lambda does not pickle.
def word_key(word: str) -> str:
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


def ours_wordcount(lines: list[str], cores: int) -> dict[str, int]:
    flow = Dataflow("wordcount")
    out = flow.from_iterable(lines).flat_map(str.split).key_by(word_key).count().collect()
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


# -- measuring ---------------------------------------------------------------------


class NotSupported(Exception):
    pass


def timed_rate(units: int, fn: Callable[[], object], expected: Callable[[object], bool]) -> float:
    """units/s of one run of `fn`, whose result is checked."""
    start = time.perf_counter()
    try:
        result = fn()
    except NotImplementedError as exc:  # run(flow, cores=N) before multi-core exists
        raise NotSupported(str(exc)) from exc
    elapsed = time.perf_counter() - start
    assert expected(result), "results differ from the plain loop's"
    return units / elapsed


def interleaved_rates(reps: int, units: int, fns: dict[str, Callable[[], object]],
                      expected: Callable[[object], bool]) -> dict[str, float | None]:
    """Median units/s per entry of `fns` (None: not supported yet).

    The runs are taken in turn (plain, ours, plain, ours...) rather than all
    of one then all of the other, so that a slow stretch of the shared
    machine hits every engine alike and the ratios stay meaningful.
    """
    runs: dict[str, list[float]] = {name: [] for name in fns}
    supported = dict.fromkeys(fns, True)
    for _ in range(reps):
        for name, fn in fns.items():
            if not supported[name]:
                continue
            try:
                runs[name].append(timed_rate(units, fn, expected))
            except NotSupported:
                supported[name] = False
    return {name: statistics.median(runs[name]) if supported[name] else None for name in fns}


def row(name: str, engine: str, cores: int, value: float | None, plain: float,
        target: float | None = None) -> list[object]:
    if value is None:
        return [name, engine, cores, "not supported yet", "", "", ""]
    ratio = value / plain
    verdict = ("PASS" if ratio >= target else "FAIL") if target else ""
    return [name, engine, cores, value, f"{ratio:.0%}", f">= {target:.0%}" if target else "", verdict]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    parser.add_argument("--cores", default="1", help="comma-separated kernel counts, e.g. 1,2 (default 1)")
    parser.add_argument("--no-bytewax", action="store_true", help="skip the Bytewax row")
    args = parser.parse_args(argv)
    cores_list = [int(c) for c in args.cores.split(",") if c.strip()]
    if args.quick:
        n_lines, n_heavy, reps, bytewax_reps = 20_000, 2_000, 3, 1
    else:
        n_lines, n_heavy, reps, bytewax_reps = 200_000, 20_000, 7, 3

    print(machine())
    print()

    # -- word count
    lines = make_lines(n_lines)
    reference = plain_wordcount(lines)
    assert sum(reference.values()) == n_lines * WORDS_PER_LINE

    def same_counts(result) -> bool:
        return result == reference

    fns: dict[str, Callable[[], object]] = {"plain": lambda: plain_wordcount(lines)}
    for cores in cores_list:
        fns[f"ours{cores}"] = lambda cores=cores: ours_wordcount(lines, cores)
    wc = interleaved_rates(reps, n_lines, fns, same_counts)
    name = f"word count, {n_lines:,} lines x {WORDS_PER_LINE} words"
    plain = wc["plain"]
    rows = [row(name, "plain dict loop", 1, plain, plain)]
    rows += [row(name, "ours: kernel.run(flow)", c, wc[f"ours{c}"], plain, TARGET_VS_PLAIN)
             for c in cores_list]
    if args.no_bytewax or not bytewax_available():
        why = "skipped" if args.no_bytewax else "not installed"
        rows.append([name, "Bytewax 0.21 run_main", 1, why, "", "", ""])
    else:
        # Fewer runs: one takes ~10x as long as ours.
        bw = interleaved_rates(bytewax_reps, n_lines, {"bw": lambda: bytewax_wordcount(lines)}, same_counts)
        rows.append(row(name, "Bytewax 0.21 run_main", 1, bw["bw"], plain))

    # -- CPU-heavy map
    records = range(n_heavy)
    heavy_reference = plain_heavy(records)

    def same_records(result) -> bool:
        # sorted: with several kernels the output order is not the input order
        return sorted(result) == heavy_reference

    fns = {"plain": lambda: plain_heavy(records)}
    for cores in cores_list:
        fns[f"ours{cores}"] = lambda cores=cores: ours_heavy(records, cores)
    hv = interleaved_rates(reps, n_heavy, fns, same_records)
    name = f"CPU-heavy map, {n_heavy:,} records x sum of 200 squares"
    rows.append(row(name, "plain list comprehension", 1, hv["plain"], hv["plain"]))
    rows += [row(name, "ours: kernel.run(flow)", c, hv[f"ours{c}"], hv["plain"]) for c in cores_list]

    print(table(
        f"Pipelines: throughput (median of {reps} runs; Bytewax {bytewax_reps}); word count in lines/s, "
        "CPU-heavy map in records/s",
        ["pipeline", "engine", "cores", "per second", "vs plain", "target", "result"],
        rows,
    ))


if __name__ == "__main__":
    main()
