"""A cluster on one machine: what the websocket links and their relays cost.

    python -m benches.cluster            # full run (about a minute)
    python -m benches.cluster --quick    # smoke test

The same flows as benches/pipelines.py (word count over 200,000 lines; the
CPU-heavy map), run four ways, results checked equal, in interleaved runs:

* plain: the loop a user would write (the baseline of the ratios);
* 1 process, 1 core: `run(flow)`;
* 1 process, 2 cores: `run(flow, cores=2)`: two kernels, shared-memory rings;
* 2 processes of 1 core on loopback: `run(flow, process_id=i, peers=...)` in
  two forked processes: two kernels, every exchange through both relays and
  an authenticated websocket; timed from the fork to process 0's results,
  link start-up included (as `run` includes its own start-up).

Then, with a `state_dir` on the cluster (issue 16):

* snapshot cost: a windowed sum (1,000 keys, 1 s tumbling windows) on 2
  processes x 1 core, without a state_dir and with snapshots every 1.0 s
  (each process's own SQLite store, fsynced; an epoch complete once both
  made it durable), interleaved; target: <= 5% of throughput;
* recovery: a count per key over 1,000,000 keys spread over the 2 processes,
  stopped by a failure after an epoch holding every key is complete, then
  the same cluster run again: the time from starting it to every kernel
  having restored its keys (forks, links, the processes' agreement on the
  epoch, reading, checking and unpickling each kernel's snapshot).

On this 2-core box the two-process row pays for two relay processes on the
same two CPUs as the kernels; on real machines each has its own. Each run
includes the cluster's start (forks, listening, dialing, the handshakes) and
end (results to process 0, DONE, BYE): ~50-100 ms here. aiohttp is imported
once, before the runs.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
from collections import Counter

# net._relay imports aiohttp (~150 ms): once per process, as in a long-lived
# member of a cluster, not once per timed run.
import kernel.net._relay  # noqa: F401

from benches._report import machine, table
from benches.pipelines import heavy, make_lines, plain_heavy, plain_wordcount, timed_rate
from kernel import Dataflow, run

SECRET = "bench-secret"


def wordcount_flow(lines):
    flow = Dataflow("wc")
    out = flow.from_iterable(lines).flat_map(str.split).key_by(lambda w: w).count().collect()
    return flow, out, lambda items: dict(items)


def heavy_flow(records):
    flow = Dataflow("heavy")
    out = flow.from_iterable(records).map(heavy).collect()
    return flow, out, lambda items: sorted(items)


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _member(build, data, index, peers, out) -> None:
    flow, handle, shape = build(data)
    run(flow, process_id=index, peers=peers, secret=SECRET)
    out.send(shape(handle.items) if index == 0 else None)


def on_two_processes(build, data):
    context = multiprocessing.get_context("fork")
    peers = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    receivers, children = [], []
    for index in (1, 0):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_member, args=(build, data, index, peers, sender))
        child.start()
        sender.close()
        receivers.append(receiver)
        children.append(child)
    result = receivers[1].recv()
    receivers[0].recv()
    for child in children:
        child.join(10)
    return result


def on_one_process(build, data, cores: int):
    flow, handle, shape = build(data)
    run(flow, cores=cores)
    return shape(handle.items)


def measure(name: str, units: int, plain_fn, build, data, expected, reps: int) -> list[list]:
    fns = {
        "plain": plain_fn,
        "1 process, 1 core": lambda: on_one_process(build, data, 1),
        "1 process, 2 cores (rings)": lambda: on_one_process(build, data, 2),
        "2 processes x 1 core (links, loopback)": lambda: on_two_processes(build, data),
    }
    rates = {key: [] for key in fns}
    for _ in range(reps):
        for key, fn in fns.items():  # interleaved: a, b, c, d, a, b...
            rates[key].append(timed_rate(units, fn, lambda result: result == expected))
    medians = {key: statistics.median(values) for key, values in rates.items()}
    one = medians["1 process, 1 core"]
    return [[name, key, value, f"{value / medians['plain']:.0%}",
             "" if key == "plain" else f"{value / one:.2f}x"] for key, value in medians.items()]


# -- with a state_dir (issue 16) ------------------------------------------------------

TARGET_SNAPSHOT_COST = 0.05


def window_sum_flow(n: int):
    from operators import Tumbling

    flow = Dataflow("cluster-window-sum")
    out = (flow.from_iterable(range(n), timestamp=lambda i: i / 100_000, max_delay=0.5)
               .key_by(lambda i: i % 1000).window(Tumbling(1.0)).sum().collect())
    return flow, out, lambda items: len(items)


def _state_member(build, data, index, peers, options, out) -> None:
    flow, handle, shape = build(data)
    try:
        run(flow, process_id=index, peers=peers, secret=SECRET, **options)
        out.send(shape(handle.items) if index == 0 else None)
    except Exception as exc:  # the recovery section's planned failure
        out.send(("failed", type(exc).__name__))


def on_two_processes_with(build, data, options_for):
    context = multiprocessing.get_context("fork")
    peers = ",".join(f"127.0.0.1:{port}" for port in _free_ports(2))
    receivers, children = [], []
    for index in (1, 0):
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_state_member,
                                args=(build, data, index, peers, options_for(index), sender))
        child.start()
        sender.close()
        receivers.append(receiver)
        children.append(child)
    results = [receiver.recv() for receiver in receivers]
    for child in children:
        child.join(10)
    return results[1]


def section_snapshot_cost(n: int, reps: int) -> str:
    import shutil
    import tempfile

    expected = len({(i % 1000, i // 100_000) for i in range(min(n, 200_000))}) if n <= 200_000 else None
    rates: dict[str, list[float]] = {"none": [], "1.0": []}
    for _ in range(reps):
        for label in rates:
            directory = tempfile.mkdtemp(prefix="bench-cluster-state-")
            options = {} if label == "none" else {"state_dir": directory, "epoch_interval": float(label)}
            try:
                rates[label].append(timed_rate(
                    n, lambda options=options: on_two_processes_with(window_sum_flow, n, lambda _i: options),
                    lambda result: result > 0 and (expected is None or result == expected)))
            finally:
                shutil.rmtree(directory, ignore_errors=True)
    base = statistics.median(rates["none"])
    rate = statistics.median(rates["1.0"])
    cost = 1 - rate / base
    rows = [["2 processes x 1 core, no state_dir", base, "", "", ""],
            ["2 processes x 1 core, snapshots every 1.0 s", rate, f"{cost:.1%}",
             f"<= {TARGET_SNAPSHOT_COST:.0%}", "PASS" if cost <= TARGET_SNAPSHOT_COST else "FAIL"]]
    return table(f"snapshots on a cluster: windowed sum, {n:,} events, 1,000 keys (median of {reps})",
                 ["run", "events/s", "cost vs no snapshots", "target", "result"], rows)


TAIL = 24_000


def keyed_count_flow(data):
    """A count per key over `keys` distinct keys, then a slow tail over
    which epochs complete; with `fail`, a record of the tail raises."""
    import os
    import time as _time

    from kernel import Operator
    from state import value_state

    keys, fail, marks = data

    class CountKeys(Operator):  # count() with a clock on restore
        def open(self, context):
            self.counts = value_state(self, "counts")
            self.kernel = context.index

        def on_batch(self, port, batch):
            counts = self.counts
            for key, _ in batch:
                counts[key] = counts.get(key, 0) + 1

        def restore(self, snapshot):
            super().restore(snapshot)
            with open(os.path.join(marks, f"restored-k{self.kernel}"), "w") as f:
                f.write(f"{_time.time()} {len(self.counts)}")

    def tail(i):  # after the keys, batches that each take ~0.3 s: epochs complete between them
        if i >= keys:
            _time.sleep(0.0003)
            if fail and i == keys + TAIL - 1000:
                raise RuntimeError("the planned failure")
        return i

    flow = Dataflow("cluster-recovery")
    out = (flow.from_iterable(range(keys + TAIL), batch_size=1000).map(tail)
               .key_by(lambda i: f"key-{i:08d}").apply(CountKeys).collect())
    return flow, out, lambda items: len(items)


def section_recovery(keys: int, reps: int) -> str:
    import os
    import shutil
    import tempfile
    import time

    times, restored_keys = [], []
    for _ in range(reps):
        directory = tempfile.mkdtemp(prefix="bench-cluster-recovery-")
        marks = os.path.join(directory, "marks")
        os.makedirs(marks)
        try:
            options = lambda i, directory=directory: {  # noqa: E731
                "state_dir": os.path.join(directory, f"state{i}"), "epoch_interval": 1.0}
            failed = on_two_processes_with(keyed_count_flow, (keys, True, marks), options)
            assert failed == ("failed", "PeerFailed") or failed[0] == "failed", failed
            start = time.time()
            on_two_processes_with(keyed_count_flow, (keys, False, marks), options)
            stamps = [open(os.path.join(marks, name)).read().split() for name in sorted(os.listdir(marks))]
            assert len(stamps) == 2, stamps
            times.append(max(float(t) for t, _ in stamps) - start)
            restored_keys.append(sum(int(n) for _, n in stamps))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    assert all(n >= keys for n in restored_keys), restored_keys  # every key (and some of the tail)
    rows = [["keys restored (both processes; the tail's too)", f"{min(restored_keys):,}"],
            ["start of the rerun to every kernel restored", f"{statistics.median(times) * 1000:.0f} ms"]]
    return table(f"recovery on a cluster: {keys:,} keys over 2 processes x 1 core (median of {reps})",
                 ["what", "measured"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    args = parser.parse_args(argv)
    reps, n_lines, n_records = (1, 20_000, 20_000) if args.quick else (5, 200_000, 200_000)
    print(machine())
    print()
    lines = make_lines(n_lines)
    words = Counter(plain_wordcount(lines))
    rows = measure("word count (lines/s)", n_lines, lambda: plain_wordcount(lines), wordcount_flow, lines,
                   dict(words), reps)
    records = range(n_records)
    rows += measure("CPU-heavy map (records/s)", n_records, lambda: plain_heavy(records), heavy_flow,
                    records, sorted(plain_heavy(records)), reps)
    print(table(f"cluster on one machine: throughput (median of {reps})",
                ["pipeline", "run as", "rate", "vs plain", "vs 1 core"], rows))
    print()
    print(section_snapshot_cost(100_000 if args.quick else 16_000_000, reps))
    print()
    print(section_recovery(20_000 if args.quick else 1_000_000, 1 if args.quick else 3))


if __name__ == "__main__":
    main()
