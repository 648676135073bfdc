"""Inter-process channels: our shared-memory SpscRing vs multiprocessing and faster-fifo.

    python -m benches.channels            # full run (about 80 s)
    python -m benches.channels --quick    # smoke test (~10 s)
    python -m benches.channels --no-pin   # let the scheduler place the processes

Every measurement runs a real producer process and a real consumer process
(multiprocessing, "fork" context), pinned to one CPU each (the 2-core
benchmark box: one core each) while the parent sleeps. Three sections:

1. throughput in records/s at 1, 10, 100 and 1000 records per message. The
   records are `(int, str)` pairs, `(i, f"word{i % 1000}")`, the shape
   `key_by` produces. The producer encodes each batch once and sends it; the
   consumer receives it and decodes it back into a list of tuples:
   * ring: `net._codec.encode_batch` + `HEADER`, `SpscRing.push2` (spinning
     while the ring is full); the consumer spins on `pop()`, strips the 5-byte
     header and calls `net._codec.decode`;
   * ring, transport only: the same frames encoded once before the run and
     never decoded, to show how much of the ring's time is the codec's;
   * `multiprocessing.Queue`: `put(batch)` (its feeder thread pickles), `get()`;
   * `multiprocessing.Pipe`: `send(batch)` (pickles), `recv()`;
   * faster-fifo (when installed): `put(batch)` (pickles), `get_many()`.
   The CPU column (CPU time / wall time of each process) shows whether a run
   had its two cores: other programs on a shared box take them away.
2. the ring at 1000 records per message against msgspec's own decode rate for
   the same records (`Decoder(list[tuple])` on the same bodies), in one
   process: the consumer decodes every batch itself, so its decode rate
   bounds the ring, and so does the producer's encode rate, type checks
   included (both measured in one process for comparison).
3. round-trip latency of a 16-byte message between two processes, both sides
   spinning ("hot") for the ring, blocking or spinning for the others.

The cyclic GC is off in every measuring process (as in benches/latency.py):
the decoded tuples would otherwise trigger collections at random points.
Figures are medians over several runs taken in turn (a, b, c, a, b, c...):
the benchmark machine is a shared, noisy 2-core box.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import queue
import statistics
import time
import traceback
from collections.abc import Callable
from itertools import cycle, islice

import msgspec

from benches._report import machine, percentile, table
from net._codec import HEADER, decode, encode_batch
from net.shm import SpscRing

try:
    import faster_fifo
except ImportError:  # optional: `pip install faster-fifo` (the `bench` extra)
    faster_fifo = None

CTX = multiprocessing.get_context("fork")
PREFIX = "benchch"  # every ring this benchmark creates: /dev/shm/benchch-*
RING_BYTES = 1 << 20
FIFO_BYTES = 4 << 20
DISTINCT_RECORDS = 10_000  # the producer cycles through this many records
TIMEOUT = 60.0  # seconds: a run that takes longer is killed and reported
# The producer (pinger) runs pinned to one CPU, the consumer (ponger) to another:
# on the 2-core box the scheduler otherwise sometimes stacks both on one core
# while another program holds the other, and two spinning processes on one core
# measure the scheduler, not the channel. `--no-pin` leaves placement to it.
PIN = [True]
BATCH_SIZES = (1, 10, 100, 1000)

TARGET_MSGS = 1_000_000  # ring, 1 record per message: messages/s
TARGET_VS_QUEUE = 6.0  # ring, 1 record per message: x multiprocessing.Queue
TARGET_VS_DECODE = 0.90  # ring at 1000 records per message: share of msgspec's decode rate
TARGET_RTT_US = 10.0  # ring hot round trip p50

perf = time.perf_counter
perf_ns = time.perf_counter_ns
cpu_time = time.process_time  # all threads of the process (mp.Queue's feeder too)

FIGURES: dict[str, float] = {}  # what the targets table at the end reads


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def records(n: int) -> list[tuple[int, str]]:
    return [(i, f"word{i % 1000}") for i in range(n)]


def make_pool(batch: int) -> list[list[tuple[int, str]]]:
    """The batches a producer sends, over and over."""
    recs = records(max(batch, DISTINCT_RECORDS))
    return [recs[i:i + batch] for i in range(0, len(recs), batch)]


# -- running two processes -------------------------------------------------------


def _child(fn: Callable, args: tuple, out, cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    gc.disable()
    try:
        result = fn(*args)
    except BaseException:
        out.send(("error", traceback.format_exc()))
        raise
    out.send(("ok", result))
    out.close()


def run_pair(jobs: list[tuple[Callable, tuple]], timeout: float = TIMEOUT) -> list:
    """Run each `fn(*args)` of `jobs` in its own forked process, the i-th
    pinned to the i-th CPU we may use (unless `PIN` is off); their results.

    Whatever happens (an error, a timeout, Ctrl-C), every process is gone
    when this returns or raises.
    """
    cpus = sorted(os.sched_getaffinity(0))
    pin = PIN[0] and len(cpus) >= len(jobs)
    procs, pipes = [], []
    try:
        for i, (fn, args) in enumerate(jobs):
            r, w = CTX.Pipe(duplex=False)
            pipes += [r, w]
            p = CTX.Process(target=_child, args=(fn, args, w, cpus[i] if pin else None), daemon=True)
            p.start()
            procs.append((p, r))
        deadline = perf() + timeout
        results = []
        for p, r in procs:
            if not r.poll(max(0.0, deadline - perf())):
                raise TimeoutError(f"{p.name} ({jobs[len(results)][0].__name__}) gave no result "
                                   f"within {timeout:.0f} s")
            status, value = r.recv()
            if status != "ok":
                raise RuntimeError(f"{jobs[len(results)][0].__name__} failed:\n{value}")
            results.append(value)
        return results
    finally:
        for p, _ in procs:
            p.join(timeout=2.0)
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join()
            p.close()
        for conn in pipes:
            conn.close()


# -- 1: throughput -----------------------------------------------------------------
#
# A run: the producer sends `warm` messages, the consumer receives them and sets
# `go`; the producer then takes its start time and sends `n` messages; the
# consumer takes its end time once it has decoded the last record.
# perf_counter is CLOCK_MONOTONIC, one clock for every process on the machine.


def _expected_last(pool: list, warm: int, n: int) -> list:
    return pool[(warm + n - 1) % len(pool)]


# Producers return (start time, CPU seconds spent sending); consumers return
# (end time, CPU seconds spent receiving, records received, last batch right).


def produce_ring(name: str, pool: list, warm: int, n: int, go) -> tuple[float, float]:
    ring = SpscRing.attach(name)
    try:
        push2, pack, encode = ring.push2, HEADER.pack, encode_batch
        batches = cycle(pool)
        for batch in islice(batches, warm):
            kind, body = encode(batch)
            head = pack(kind, 0)
            while not push2(head, body):
                pass
        go.wait()
        start, cpu = perf(), cpu_time()
        for batch in islice(batches, n):
            kind, body = encode(batch)
            head = pack(kind, 0)
            while not push2(head, body):  # full: spin until the consumer makes room
                pass
        return start, cpu_time() - cpu
    finally:
        ring.close()


def consume_ring(name: str, pool: list, warm: int, n: int, go) -> tuple[float, float, int, bool]:
    ring = SpscRing.attach(name)
    try:
        pop = ring.pop
        got = 0
        while got < warm:
            frame = pop()
            if frame is not None:
                decode(frame[0], frame[5:])
                got += 1
        go.set()
        cpu = cpu_time()
        total = n * len(pool[0])
        count = 0
        batch = None
        while count < total:
            frame = pop()
            if frame is None:  # empty: spin
                continue
            batch = decode(frame[0], frame[5:])  # kind, then the body after the 5-byte header
            count += len(batch)
        end, cpu = perf(), cpu_time() - cpu
        del frame
        return end, cpu, count, batch == _expected_last(pool, warm, n)
    finally:
        ring.close()


def produce_ring_raw(name: str, pool: list, warm: int, n: int, go) -> tuple[float, float]:
    """Transport only: the frames are encoded before the clock starts."""
    ring = SpscRing.attach(name)
    try:
        push2 = ring.push2
        frames = [(HEADER.pack(kind, 0), body) for kind, body in map(encode_batch, pool)]
        it = cycle(frames)
        for head, body in islice(it, warm):
            while not push2(head, body):
                pass
        go.wait()
        start, cpu = perf(), cpu_time()
        for head, body in islice(it, n):
            while not push2(head, body):
                pass
        return start, cpu_time() - cpu
    finally:
        ring.close()


def consume_ring_raw(name: str, pool: list, warm: int, n: int, go) -> tuple[float, float, int, bool]:
    """Transport only: pops frames and counts them; decodes only the last one."""
    ring = SpscRing.attach(name)
    try:
        pop = ring.pop
        got = 0
        while got < warm:
            if pop() is not None:
                got += 1
        go.set()
        cpu = cpu_time()
        count = 0
        last = None
        while count < n:
            frame = pop()
            if frame is not None:
                last = frame
                count += 1
        end, cpu = perf(), cpu_time() - cpu
        ok = decode(last[0], last[5:]) == _expected_last(pool, warm, n)
        del frame, last
        return end, cpu, count * len(pool[0]), ok
    finally:
        ring.close()


def produce_mpq(q, pool: list, warm: int, n: int, go) -> tuple[float, float]:
    put = q.put
    batches = cycle(pool)
    for batch in islice(batches, warm):
        put(batch)
    go.wait()
    start, cpu = perf(), cpu_time()
    for batch in islice(batches, n):
        put(batch)
    q.close()
    q.join_thread()  # the feeder thread has pickled and written everything
    return start, cpu_time() - cpu


def consume_mpq(q, pool: list, warm: int, n: int, go) -> tuple[float, float, int, bool]:
    get = q.get
    for _ in range(warm):
        get()
    go.set()
    cpu = cpu_time()
    total = n * len(pool[0])
    count = 0
    batch = None
    while count < total:
        batch = get()
        count += len(batch)
    return perf(), cpu_time() - cpu, count, batch == _expected_last(pool, warm, n)


def produce_pipe(conns, pool: list, warm: int, n: int, go) -> tuple[float, float]:
    send = conns[1].send
    batches = cycle(pool)
    for batch in islice(batches, warm):
        send(batch)
    go.wait()
    start, cpu = perf(), cpu_time()
    for batch in islice(batches, n):
        send(batch)
    return start, cpu_time() - cpu


def consume_pipe(conns, pool: list, warm: int, n: int, go) -> tuple[float, float, int, bool]:
    recv = conns[0].recv
    for _ in range(warm):
        recv()
    go.set()
    cpu = cpu_time()
    total = n * len(pool[0])
    count = 0
    batch = None
    while count < total:
        batch = recv()
        count += len(batch)
    return perf(), cpu_time() - cpu, count, batch == _expected_last(pool, warm, n)


def produce_fifo(q, pool: list, warm: int, n: int, go) -> tuple[float, float]:
    put = q.put
    batches = cycle(pool)
    for batch in islice(batches, warm):
        put(batch, True, TIMEOUT)
    go.wait()
    start, cpu = perf(), cpu_time()
    for batch in islice(batches, n):
        put(batch, True, TIMEOUT)
    return start, cpu_time() - cpu


def consume_fifo(q, pool: list, warm: int, n: int, go) -> tuple[float, float, int, bool]:
    get_many = q.get_many
    got = 0
    while got < warm:
        got += len(get_many(True, TIMEOUT, warm - got))
    go.set()
    cpu = cpu_time()
    total = n * len(pool[0])
    count = 0
    batch = None
    while count < total:
        for batch in get_many(True, TIMEOUT):  # every message waiting, one lock
            count += len(batch)
    return perf(), cpu_time() - cpu, count, batch == _expected_last(pool, warm, n)


class _Ring:
    def __enter__(self):
        self.ring = SpscRing.create(RING_BYTES, prefix=PREFIX)
        return self.ring.name

    def __exit__(self, *exc):
        self.ring.close()
        self.ring.unlink()


class _MpQueue:
    def __enter__(self):
        self.q = CTX.Queue()
        return self.q

    def __exit__(self, *exc):
        self.q.close()
        self.q.join_thread()


class _MpPipe:
    def __enter__(self):
        self.conns = CTX.Pipe()
        return self.conns

    def __exit__(self, *exc):
        for conn in self.conns:
            conn.close()


class _Fifo:
    def __enter__(self):
        self.q = faster_fifo.Queue(max_size_bytes=FIFO_BYTES)
        return self.q

    def __exit__(self, *exc):
        self.q.close()


# label -> (resource, producer, consumer); None: not installed
THROUGHPUT: dict[str, tuple | None] = {
    "ours: SpscRing (encode_batch + push2 / pop + decode)": (_Ring, produce_ring, consume_ring),
    "ours: SpscRing, transport only (pre-encoded, no decode)": (_Ring, produce_ring_raw,
                                                                consume_ring_raw),
    "multiprocessing.Queue (put / get, pickle)": (_MpQueue, produce_mpq, consume_mpq),
    "multiprocessing.Pipe (send / recv, pickle)": (_MpPipe, produce_pipe, consume_pipe),
    "faster-fifo Queue (put / get_many, pickle)": (
        (_Fifo, produce_fifo, consume_fifo) if faster_fifo else None),
}
RING = next(iter(THROUGHPUT))
MPQ = "multiprocessing.Queue (put / get, pickle)"


def throughput_run(entry: tuple, pool: list, n: int) -> tuple[float, float, float]:
    """One producer -> consumer run of `n` messages: (records/s, the producer's
    CPU time / wall time, the consumer's CPU time / wall time)."""
    resource, produce, consume = entry
    warm = max(5, min(1000, n // 20))
    go = CTX.Event()
    with resource() as channel:
        (start, cpu_p), (end, cpu_c, count, ok) = run_pair([
            (produce, (channel, pool, warm, n, go)), (consume, (channel, pool, warm, n, go))])
    size = len(pool[0])
    if count != n * size or not ok:
        raise AssertionError(f"{produce.__name__}: got {count} records, expected {n * size}; "
                             f"last batch {'matches' if ok else 'differs'}")
    wall = end - start
    return count / wall, cpu_p / wall, cpu_c / wall


def interleaved(reps: int, fns: dict[str, Callable[[], tuple[float, ...]]]) -> dict[str, tuple]:
    """Medians per entry of `fns` (each returns a tuple of figures, and each
    figure gets its own median), the runs taken in turn (a, b, c, a, b, c...)
    so that a slow stretch of the shared machine hits every entry alike."""
    runs: dict[str, list[tuple]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            runs[name].append(fn())
    return {name: tuple(map(statistics.median, zip(*values))) for name, values in runs.items()}


def section_throughput(reps: int, records_per_run: dict[int, int]) -> list[str]:
    rows = []
    for size in BATCH_SIZES:
        pool = make_pool(size)
        n = records_per_run[size] // size
        fns = {label: (lambda entry=entry, pool=pool, n=n: throughput_run(entry, pool, n))
               for label, entry in THROUGHPUT.items() if entry is not None}
        figures = interleaved(reps, fns)
        base = figures[MPQ][0]
        FIGURES[f"ring {size}"], FIGURES[f"mpq {size}"] = figures[RING][0], base
        for label in THROUGHPUT:
            if label not in figures:
                rows.append([size, label, "not installed", "", "", "", "", ""])
                continue
            rate, cpu_p, cpu_c = figures[label]
            target = result = ""
            if size == 1 and label == RING:
                target = f">= {TARGET_MSGS:,} msg/s, >= {TARGET_VS_QUEUE:g}x"
                result = verdict(rate >= TARGET_MSGS and rate >= TARGET_VS_QUEUE * base)
            rows.append([size, label, rate, rate / size, f"{rate / base:.2f}x",
                         f"{cpu_p:.0%} / {cpu_c:.0%}", target, result])
    title = ("1. throughput, producer process -> consumer process: records/s "
             f"(records: (int, str) pairs (i, f'word{{i % 1000}}'); median of {reps} runs; "
             "CPU: CPU time / wall time of producer / consumer, 100% = one whole core)")
    return [table(title, ["records/msg", "transport", "records/s", "messages/s", "vs mp.Queue",
                          "CPU prod / cons", "target", "result"], rows)]


# -- 2: the ring at 1000 records per message vs msgspec's decode rate ----------------


def codec_rate(pool: list, bodies: list, n: int, what: str) -> float:
    """records/s of `n` batches in this process: msgspec's own decode of the
    same bodies into the same records, a list of tuples ("msgspec"),
    `net._codec.decode` ("decode") or `net._codec.encode_batch` ("encode"),
    over the batches `pool` and their encodings `bodies`."""
    plain = msgspec.msgpack.Decoder(list[tuple]).decode
    gc.collect()
    gc.disable()
    try:
        start = perf()
        if what == "encode":
            for batch in islice(cycle(pool), n):
                encode_batch(batch)
        elif what == "decode":
            for kind, body in islice(cycle(bodies), n):
                decode(kind, body)
        else:
            for _kind, body in islice(cycle(bodies), n):
                plain(body)
        return n * len(pool[0]) / (perf() - start)
    finally:
        gc.enable()


def section_decode(reps: int, records_per_run: int) -> list[str]:
    size = 1000
    pool = make_pool(size)
    bodies = [encode_batch(batch) for batch in pool]
    n = records_per_run // size
    rates = interleaved(reps, {
        "msgspec": lambda: (codec_rate(pool, bodies, n, "msgspec"),),
        "decode": lambda: (codec_rate(pool, bodies, n, "decode"),),
        "encode": lambda: (codec_rate(pool, bodies, n, "encode"),),
        "ring": lambda: throughput_run(THROUGHPUT[RING], pool, n),
    })
    rates = {name: figures[0] for name, figures in rates.items()}
    base = rates["msgspec"]
    share = rates["ring"] / base
    FIGURES["decode share"] = share
    rows = [
        ["msgspec Decoder(list[tuple]).decode alone (the same records), one process",
         rates["msgspec"], "100%", "", ""],
        ["net._codec.decode (that decoder behind a kind check; the consumer's work), one process",
         rates["decode"], f"{rates['decode'] / base:.0%}", "", ""],
        ["net._codec.encode_batch (the producer's work), one process", rates["encode"],
         f"{rates['encode'] / base:.0%}", "", ""],
        ["ours: SpscRing end to end, producer -> consumer process", rates["ring"], f"{share:.0%}",
         f">= {TARGET_VS_DECODE:.0%}", verdict(share >= TARGET_VS_DECODE)],
    ]
    return [table(
        f"2. 1000 records per message: ring end to end vs msgspec decode of the same batches "
        f"(records/s, median of {reps} runs)",
        ["what", "records/s", "vs msgspec decode", "target", "result"], rows)]


# -- 3: round-trip latency -------------------------------------------------------------

MESSAGE = b"0123456789abcdef"  # 16 bytes


def _samples(ping: Callable[[], None], warm: int, rounds: int) -> list[int]:
    samples = []
    for _ in range(warm + rounds):
        start = perf_ns()
        ping()
        samples.append(perf_ns() - start)
    return samples[warm:]


def ping_ring(names: tuple[str, str], warm: int, rounds: int) -> list[int]:
    out, back = SpscRing.attach(names[0]), SpscRing.attach(names[1])
    try:
        push, pop = out.push, back.pop

        def ping():
            push(MESSAGE)
            while pop() is None:
                pass

        samples = _samples(ping, warm, rounds)
        push(b"")  # stop
        return samples
    finally:
        out.close()
        back.close()


def pong_ring(names: tuple[str, str]) -> None:
    inbox, out = SpscRing.attach(names[0]), SpscRing.attach(names[1])
    try:
        push, pop = out.push, inbox.pop
        while True:
            frame = pop()
            if frame is None:
                continue
            if not len(frame):
                break
            push(frame)
        del frame
    finally:
        inbox.close()
        out.close()


def ping_pipe(conns, warm: int, rounds: int, hot: bool) -> list[int]:
    conn = conns[0]
    send, recv, poll = conn.send, conn.recv, conn.poll

    def ping():
        send(MESSAGE)
        if hot:
            while not poll():
                pass
        recv()

    samples = _samples(ping, warm, rounds)
    send(None)
    return samples


def pong_pipe(conns, hot: bool) -> None:
    conn = conns[1]
    send, recv, poll = conn.send, conn.recv, conn.poll
    while True:
        if hot:
            while not poll():
                pass
        message = recv()
        if message is None:
            break
        send(message)


def ping_queue(queues, warm: int, rounds: int, hot: bool) -> list[int]:
    put, get = queues[0].put, queues[1].get
    nowait = queues[1].get_nowait
    empty = queue.Empty

    def ping():
        put(MESSAGE)
        if hot:
            while True:
                try:
                    return nowait()
                except empty:
                    pass
        return get(True, TIMEOUT)

    samples = _samples(ping, warm, rounds)
    put(None)
    return samples


def pong_queue(queues, hot: bool) -> None:
    get, put = queues[0].get, queues[1].put
    nowait = queues[0].get_nowait
    empty = queue.Empty
    while True:
        if hot:
            while True:
                try:
                    message = nowait()
                    break
                except empty:
                    pass
        else:
            message = get(True, TIMEOUT)
        if message is None:
            break
        put(message)


class _RingPair:
    def __enter__(self):
        self.rings = [SpscRing.create(4096, prefix=PREFIX) for _ in range(2)]
        return tuple(r.name for r in self.rings)

    def __exit__(self, *exc):
        for r in self.rings:
            r.close()
            r.unlink()


class _QueuePair:
    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make

    def __enter__(self):
        self.queues = (self.make(), self.make())
        return self.queues

    def __exit__(self, *exc):
        for q in self.queues:
            q.close()
            if hasattr(q, "join_thread"):
                q.join_thread()


# label -> (resource factory, ping, pong, extra args); None: not installed
LATENCY: dict[str, tuple | None] = {
    "ours: SpscRing pair, both sides spin on pop()": (_RingPair, ping_ring, pong_ring, ()),
    "multiprocessing.Pipe, blocking recv()": (_MpPipe, ping_pipe, pong_pipe, (False,)),
    "multiprocessing.Pipe, spin on poll() then recv()": (_MpPipe, ping_pipe, pong_pipe, (True,)),
    "multiprocessing.Queue, blocking get()": (
        lambda: _QueuePair(CTX.Queue), ping_queue, pong_queue, (False,)),
    "faster-fifo Queue, blocking get()": (
        (lambda: _QueuePair(lambda: faster_fifo.Queue(max_size_bytes=1 << 16)), ping_queue,
         pong_queue, (False,)) if faster_fifo else None),
    "faster-fifo Queue, spin on get_nowait()": (
        (lambda: _QueuePair(lambda: faster_fifo.Queue(max_size_bytes=1 << 16)), ping_queue,
         pong_queue, (True,)) if faster_fifo else None),
}
RING_RTT = next(iter(LATENCY))
PIPE_RTT = "multiprocessing.Pipe, blocking recv()"


def round_trips(entry: tuple, warm: int, rounds: int) -> list[float]:
    """Round-trip times (us) of `rounds` pings after `warm` unmeasured ones."""
    resource, ping, pong, extra = entry
    with resource() as channel:
        samples, _ = run_pair([(ping, (channel, warm, rounds, *extra)), (pong, (channel, *extra))])
    assert len(samples) == rounds
    return [s / 1e3 for s in samples]


def section_latency(reps: int, warm: int, rounds: int) -> list[str]:
    runs: dict[str, list[list[float]]] = {label: [] for label, e in LATENCY.items() if e}
    for _ in range(reps):
        for label in runs:
            runs[label].append(round_trips(LATENCY[label], warm, rounds))
    p50 = {label: statistics.median(percentile(s, 50) for s in r) for label, r in runs.items()}
    p99 = {label: statistics.median(percentile(s, 99) for s in r) for label, r in runs.items()}
    rows = []
    for label in LATENCY:
        if label not in runs:
            rows.append([label, "not installed", "", "", "", ""])
            continue
        target = result = ""
        if label == RING_RTT:
            FIGURES["rtt p50"] = p50[label]
            target = f"p50 <= {TARGET_RTT_US:g}"
            result = verdict(p50[label] <= TARGET_RTT_US)
        rows.append([label, p50[label], p99[label], f"{p50[label] / p50[PIPE_RTT]:.2f}x", target,
                     result])
    return [table(
        f"3. round-trip latency of a 16-byte message between two processes (us; {rounds:,} round "
        f"trips after {warm:,} warm-up, median over {reps} runs)",
        ["channel", "p50 us", "p99 us", "p50 vs Pipe", "target", "result"], rows)]


def section_targets() -> list[str]:
    msgs, queue_rate = FIGURES["ring 1"], FIGURES["mpq 1"]
    share, rtt = FIGURES["decode share"], FIGURES["rtt p50"]
    rows = [
        ["ring, 1 record per message: messages/s", f">= {TARGET_MSGS:,}", f"{msgs:,.0f}",
         verdict(msgs >= TARGET_MSGS)],
        ["ring, 1 record per message: vs multiprocessing.Queue", f">= {TARGET_VS_QUEUE:g}x",
         f"{msgs / queue_rate:.2f}x", verdict(msgs >= TARGET_VS_QUEUE * queue_rate)],
        ["ring, 1000 records per message: share of msgspec's decode rate",
         f">= {TARGET_VS_DECODE:.0%}", f"{share:.0%}", verdict(share >= TARGET_VS_DECODE)],
        ["ring pair, hot round trip p50 (us)", f"<= {TARGET_RTT_US:g}", f"{rtt:.2f}",
         verdict(rtt <= TARGET_RTT_US)],
    ]
    return [table("Targets", ["target", "wanted", "measured", "result"], rows)]


# -- main ------------------------------------------------------------------------------


def leftovers() -> list[str]:
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith(PREFIX))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the two processes of a run to two CPUs")
    args = parser.parse_args(argv)
    PIN[0] = not args.no_pin
    if args.quick:
        reps, per_run, decode_records, rtt_reps, warm, rounds = (
            2, {1: 30_000, 10: 100_000, 100: 300_000, 1000: 500_000}, 500_000, 1, 300, 2_000)
    else:
        reps, per_run, decode_records, rtt_reps, warm, rounds = (
            7, {1: 60_000, 10: 300_000, 100: 1_000_000, 1000: 2_000_000}, 2_000_000, 5, 1_000, 5_000)
    print(machine())
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
          "; processes pinned to CPUs" if PIN[0] else "; processes not pinned", sep="")
    if faster_fifo is None:
        print("faster-fifo: not installed (pip install faster-fifo)")
    print()
    before = leftovers()
    started = perf()
    try:
        sections = [lambda: section_throughput(reps, per_run),
                    lambda: section_decode(reps, decode_records),
                    lambda: section_latency(rtt_reps, warm, rounds),
                    section_targets]
        for section in sections:
            for block in section():
                print(block)
                print(flush=True)
    finally:
        left = [f for f in leftovers() if f not in before]
        print(f"left in /dev/shm: {', '.join(left) if left else 'nothing'}; "
              f"wall {perf() - started:.0f} s; "
              "load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
