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


if __name__ == "__main__":
    main()
