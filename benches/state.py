"""Epoch snapshots: what they cost a pipeline, and what 1,000,000 keys take.

    python -m benches.state            # full run (about a minute)
    python -m benches.state --quick    # smoke test

1. The windowed sum of benches/pipelines.py (events over 1,000 keys, 1 s
   tumbling windows, 0.5 s disorder), on one core, without a state_dir and
   with snapshots every 1.0 s and every 0.25 s (SQLite in a temporary
   state_dir, fsynced commits): events/s and the cost against no snapshots.
   The input (2,000,000 events) spans several epochs. Target:
   snapshots every second cost <= 10% of throughput.
2. 1,000,000 keys of keyed state (a `count()` per key, as a ValueState): the
   size of one kernel's snapshot, the time to take it (the operator's
   `on_epoch`, pickling, the durable SQLite write), and the time to recover
   it (read and checksum, unpickle, `restore` into the operator's state) —
   the steps a snapshot and a resumed run go through, timed one by one.
3. Rescale: the same 1,000,000 keys written by 2 kernels, resumed on 3
   (each new kernel cuts both old snapshots by key group), against a
   resume on 2.
4. Incremental snapshots: the 1,000,000 keys of section 2, of which 10,000
   change each epoch (the aggregates track the keys each batch writes):
   the time a snapshot takes on the loop (the state's epoch snapshot,
   pickled) and the bytes written per epoch, whole (as before) and as a
   delta on a base; and a resume reading a base and 10 deltas.

Medians of several runs (a shared, noisy 2-core machine).
"""

from __future__ import annotations

import argparse
import gc
import pickle
import random
import shutil
import statistics
import tempfile
import time

from kernel.operators import SNAPSHOT_LAYOUT

from benches._report import machine, table
from benches.pipelines import make_events, ours_window_sums
from kernel import Dataflow, Operator, run
from operators import Tumbling
from state import SnapshotStore, value_state

TARGET_OVERHEAD = 0.10


def windowed_sum_rate(events: list, interval: float | None) -> float:
    directory = tempfile.mkdtemp(prefix="bench-state-") if interval else None
    try:
        flow = Dataflow("windowed-sum")
        sums = (flow.from_iterable(events, timestamp=lambda e: e[1], max_delay=0.5)
                    .key_by(lambda e: e[0]).map_values(lambda e: e[2])
                    .window(Tumbling(1.0)).sum())
        out = sums.collect()
        gc.collect()
        start = time.perf_counter()
        if interval:
            run(flow, state_dir=directory, epoch_interval=interval)
        else:
            run(flow)
        elapsed = time.perf_counter() - start
        assert sums.late_count.value == 0 and out.items
        return len(events) / elapsed
    finally:
        if directory:
            shutil.rmtree(directory, ignore_errors=True)


def section_overhead(n_events: int, reps: int) -> str:
    events = make_events(n_events)
    reference = ours_window_sums(events[:1000], 1)  # warm the imports
    del reference
    runs: dict[str, list[float]] = {"none": [], "1.0": [], "0.25": []}
    for _ in range(reps):  # interleaved, so a slow stretch hits all alike
        runs["none"].append(windowed_sum_rate(events, None))
        runs["1.0"].append(windowed_sum_rate(events, 1.0))
        runs["0.25"].append(windowed_sum_rate(events, 0.25))
    base = statistics.median(runs["none"])
    rows = [["no state_dir", base, "", "", ""]]
    for label in ("1.0", "0.25"):
        rate = statistics.median(runs[label])
        cost = 1 - rate / base
        target = f"<= {TARGET_OVERHEAD:.0%}" if label == "1.0" else ""
        verdict = ("PASS" if cost <= TARGET_OVERHEAD else "FAIL") if label == "1.0" else ""
        rows.append([f"snapshots every {label} s (SQLite, fsync)", rate, f"{cost:.1%}", target, verdict])
    return table(
        f"1. windowed sum, {n_events:,} events, one core: events/s (median of {reps} runs)",
        ["run", "events/s", "cost vs no snapshots", "target", "result"], rows)


class _Counts(Operator):
    """Stands for a count() operator: keyed state registered on it."""

    name = "count"


def section_million_keys(keys: int, reps: int) -> str:
    directory = tempfile.mkdtemp(prefix="bench-state-")
    try:
        op = _Counts()
        counts = value_state(op, "accumulators")
        counts.update((f"key-{i:08d}", i % 97) for i in range(keys))
        store = SnapshotStore(directory)
        store.claim("bench", 1, SNAPSHOT_LAYOUT)
        take, write, read, restore, sizes = [], [], [], [], []
        for epoch in range(1, reps + 1):
            start = time.perf_counter()
            blob = pickle.dumps({0: pickle.dumps({"accumulators": counts.snapshot()}, protocol=5)},
                                protocol=5)
            took = time.perf_counter()
            store.write(epoch, 0, blob)
            store.mark_complete(epoch)
            written = time.perf_counter()
            take.append(took - start)
            write.append(written - took)
            sizes.append(len(blob))

            start = time.perf_counter()
            _epoch, _final, blobs = store.latest(1)
            got = time.perf_counter()
            fresh = _Counts()
            state = value_state(fresh, "accumulators")
            state.restore(pickle.loads(pickle.loads(blobs[0])[0])["accumulators"])
            restore.append(time.perf_counter() - got)
            read.append(got - start)
            assert len(state) == keys
        ms = lambda values: statistics.median(values) * 1000  # noqa: E731
        rows = [
            ["snapshot size (one kernel, pickled)", f"{statistics.median(sizes) / 1e6:.1f} MB"],
            ["take: copy the state and pickle it", f"{ms(take):.0f} ms"],
            ["write: SQLite insert + commit (fsync), mark complete", f"{ms(write):.0f} ms"],
            ["recover: read + CRC-32 check", f"{ms(read):.0f} ms"],
            ["recover: unpickle + restore into the operator's state", f"{ms(restore):.0f} ms"],
            ["recovery time in all", f"{ms(read) + ms(restore):.0f} ms"],
        ]
        store.close()
        return table(f"2. {keys:,} keys of keyed state (count per key): median of {reps}",
                     ["what", "measured"], rows)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def section_rescale(keys: int, reps: int) -> str:
    """What a resumed run on 3 kernels does with the snapshots of 2: each
    new kernel unpickles both old kernels' parts and keeps the keys its
    key groups own (`Operator.rescale`, the owner test through the
    exchange's partitioner), then restores them; against one kernel
    restoring its own part as before (same-count resume)."""
    from kernel.net import Partitioner

    from kernel.dataflow._key_groups import default_key_groups, owner_table

    groups = default_key_groups(2)
    old_owner = Partitioner(2, owner_table(2, groups)).owner
    old = [{}, {}]
    for i in range(keys):
        key = f"key-{i:08d}"
        old[old_owner(key)][key] = i % 97
    blobs = [pickle.dumps({"accumulators": part}, protocol=5) for part in old]
    same, cut = [], []
    for _ in range(reps):
        start = time.perf_counter()
        fresh = _Counts()
        value_state(fresh, "accumulators").restore(pickle.loads(blobs[0])["accumulators"])
        same.append(time.perf_counter() - start)
        per_kernel = []
        for kernel in range(3):
            owns = Partitioner(3, owner_table(3, groups)).owned_by(kernel)
            start = time.perf_counter()
            fresh = _Counts()
            state = value_state(fresh, "accumulators")
            snapshot = fresh.rescale([pickle.loads(blob) for blob in blobs], owns)
            state.restore(snapshot["accumulators"])
            per_kernel.append(time.perf_counter() - start)
        cut.append(max(per_kernel))  # the kernels restore in parallel: the slowest one
    ms = lambda values: statistics.median(values) * 1000  # noqa: E731
    rows = [
        ["resume on 2 kernels, as written: unpickle + restore one kernel's part", f"{ms(same):.0f} ms"],
        ["resume on 3 kernels: unpickle both parts + cut by key group + restore (slowest kernel)",
         f"{ms(cut):.0f} ms"],
    ]
    return table(f"3. rescale 2 -> 3 kernels with {keys:,} keys ({groups} key groups): median of {reps}",
                 ["what", "measured"], rows)


def section_incremental(keys: int, changed: int, deltas: int) -> str:
    from kernel.runtime._epochs import DeltaSnapshot, snapshot_parts, unpickled_part

    directory = tempfile.mkdtemp(prefix="bench-state-")
    try:
        op = _Counts()
        counts = value_state(op, "accumulators")
        counts.track_writes()  # (as the built-in aggregates do)
        names = [f"key-{i:08d}" for i in range(keys)]
        counts.update((name, i % 97) for i, name in enumerate(names))
        store = SnapshotStore(directory)
        store.claim("bench", 1, SNAPSHOT_LAYOUT)
        rng = random.Random(1)

        def pickled(snapshot) -> bytes:  # (a kernel's snapshot of one step, as the runtime's: its
            # frontier, marks, closed inputs, timers, then the operator's snapshot)
            part = (0.0, [0.0], [], [], {"accumulators": snapshot})
            return pickle.dumps({0: pickle.dumps(part, protocol=5)}, protocol=5)

        whole_took, whole_sizes, delta_took, delta_sizes, writes = [], [], [], [], []
        for epoch in range(1, deltas + 2):
            batch = rng.sample(names, changed)
            for name in batch:
                counts[name] += 1
            counts.written(batch)
            start = time.perf_counter()
            whole = pickled(counts.snapshot())  # (before: every epoch whole)
            whole_took.append(time.perf_counter() - start)
            whole_sizes.append(len(whole))
            if epoch == 1:
                counts.take_whole()  # (the base)
            start = time.perf_counter()
            blob = pickled(counts.epoch_snapshot())
            took = time.perf_counter() - start
            if epoch > 1:
                delta_took.append(took)
                delta_sizes.append(len(blob))
                blob = DeltaSnapshot(blob)
            start = time.perf_counter()
            store.write(epoch, 0, blob)
            store.mark_complete(epoch)
            if epoch > 1:
                writes.append(time.perf_counter() - start)
        start = time.perf_counter()
        # (as a resumed run reads it: the chain's patched part comes unpickled)
        _epoch, _final, blobs = store.latest(1, as_parts=True)
        fresh = _Counts()
        state = value_state(fresh, "accumulators")
        state.restore(unpickled_part("counts", snapshot_parts(blobs[0])[0])[4]["accumulators"])
        recovered = time.perf_counter() - start
        assert state == counts
        store.close()
        ms = lambda values: statistics.median(values) * 1000  # noqa: E731
        mb = lambda values: f"{statistics.median(values) / 1e6:.2f} MB"  # noqa: E731
        rows = [
            ["whole (before): snapshot on the loop (copy + pickle)", f"{ms(whole_took):.1f} ms"],
            ["whole (before): bytes written per epoch", mb(whole_sizes)],
            ["delta (after): snapshot on the loop (the keys written + pickle)", f"{ms(delta_took):.1f} ms"],
            ["delta (after): bytes written per epoch", mb(delta_sizes)],
            ["delta (after): SQLite insert + commit (fsync), mark complete", f"{ms(writes):.0f} ms"],
            [f"resume from a base and {deltas} deltas: read, apply, unpickle, restore",
             f"{recovered * 1000:.0f} ms"],
        ]
        return table(f"4. incremental snapshots: {keys:,} keys, {changed:,} changed per epoch: "
                     f"median of {deltas}", ["what", "measured"], rows)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    args = parser.parse_args(argv)
    n_events, keys, reps = (100_000, 50_000, 2) if args.quick else (2_000_000, 1_000_000, 9)
    print(machine())
    print()
    print(section_overhead(n_events, reps))
    print()
    print(section_million_keys(keys, min(reps, 3)))
    print()
    print(section_rescale(keys, min(reps, 3)))
    print()
    print(section_incremental(keys, keys // 100, 10))


if __name__ == "__main__":
    main()
