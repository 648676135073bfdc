"""Inter-process channels: our shared-memory SpscRing vs multiprocessing and faster-fifo.

    python -m benches.channels            # full run (about 80 s)
    python -m benches.channels --quick    # smoke test (~10 s)
    python -m benches.channels --no-pin   # let the scheduler place the processes

Every measurement runs a real producer process and a real consumer process
(multiprocessing, "fork" context), pinned to one CPU each (the 2-core
benchmark box: one core each) while the parent sleeps. Three sections (and 1b):

1. throughput in records/s at 1, 10, 100 and 1000 records per message. The
   records are `(int, str)` pairs, `(i, f"word{i % 1000}")`, the shape
   `key_by` produces. The producer encodes each batch once and sends it; the
   consumer receives it and decodes it back into a list of tuples:
   * ring: `net._codec.encode_batch`, then `SpscRing.push_tagged(kind,
     channel, body)` (spinning while the ring is full); the consumer spins on
     `pop()` and decodes each frame's body after its 5-byte tag, as the
     kernel's transport does;
   * ring, transport only: the same frames encoded once before the run and
     never decoded, to show how much of the ring's time is the codec's;
   * `multiprocessing.Queue`: `put(batch)` (its feeder thread pickles), `get()`;
   * `multiprocessing.Pipe`: `send(batch)` (pickles), `recv()`;
   * faster-fifo (when installed): `put(batch)` (pickles), `get_many()`.
   The CPU column (CPU time / wall time of each process) shows whether a run
   had its two cores: other programs on a shared box take them away.
   1b. at one record per message, each side's work timed alone in one process
   (push, or encode + push; pop, or pop + decode): where a message's time
   goes.
2. the ring at 1000 records per message against msgspec's own decode rate for
   the same records (`Decoder(list[tuple])` on msgspec's own encoding of
   them as a list of arrays), in one process: the consumer decodes every
   batch itself, so its decode rate bounds the ring, and so does the
   producer's encode rate, type checks included (both measured in one
   process for comparison).
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
from contextlib import contextmanager
from functools import partial
from itertools import cycle, islice

import msgspec
from kernel.net._codec import DECODERS, decode, encode_batch
from kernel.net.shm import SpscRing

from benches._report import machine, percentile, table

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
    """The batches a producer sends, over and over: all of `batch` records
    (DISTINCT_RECORDS is a multiple of every batch size), so a consumer counts
    messages, not records."""
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


def _job_name(job: tuple[Callable, tuple]) -> str:
    fn, args = job
    return f"{fn.__name__}({type(args[0]).__name__})"  # e.g. produce(Ring)


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
                raise TimeoutError(f"{p.name} ({_job_name(jobs[len(results)])}) gave no result "
                                   f"within {timeout:.0f} s")
            status, value = r.recv()
            if status != "ok":
                raise RuntimeError(f"{_job_name(jobs[len(results)])} failed:\n{value}")
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


# -- the channels -----------------------------------------------------------------------
#
# A channel is made in the parent, which closes it once the run is over (`with`);
# the two forked processes inherit it and each opens its own end. A channel
# supplies only its primitives, and the harness (`produce` / `consume` in
# section 1, `ping` / `pong` in section 3) does the rest, the same for all:
# warm-up, the 'go' barrier, the clocks and the check of what arrived.
#
# Section 1: `sending(pool)` gives the producer `send(batches)`, which sends every
# batch of an iterable, and the messages to cycle through (the pool itself, or
# frames made from it before the clock starts); `receiving()` gives the consumer
# `receive(n)`, which takes `n` messages and returns the last, and `unpack(last)`
# turns that into its batch once the clock has stopped. These are whole loops, not
# one call per message, so that the ring's per-message work (encode, push, spin /
# pop, decode) runs inline, with no call of the harness's own in between.
#
# Section 3: `side(i, hot)` gives side i `send(message)` and `poll()`, the next
# message or None: a spinning ("hot") poll returns None while nothing has arrived,
# a blocking one waits and never does.


class Channel:
    """The parent's handle on a channel: a context manager that closes it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        pass

    @staticmethod
    def unpack(message):
        """The batch in a message from `receive`: most channels deliver batches."""
        return message


class Ring(Channel):
    """ours: SpscRing, as the kernel's transport uses it. The producer encodes
    each batch (`encode_batch`) and pushes it with `push_tagged`, spinning
    while the ring is full; the consumer spins on `pop()` and decodes each
    body after the 5-byte tag."""

    def __init__(self, capacity: int = RING_BYTES) -> None:
        self.ring = SpscRing.create(capacity, prefix=PREFIX)

    def close(self) -> None:
        self.ring.close()
        self.ring.unlink()

    @contextmanager
    def attached(self):
        """The ring as mapped by this process: each child attaches by name, as a kernel does."""
        ring = SpscRing.attach(self.ring.name)
        try:
            yield ring
        finally:
            ring.close()

    @contextmanager
    def sending(self, pool: list):
        with self.attached() as ring:
            yield self.sender(ring), self.messages(pool)

    @contextmanager
    def receiving(self):
        with self.attached() as ring:
            yield self.receiver(ring)

    @staticmethod
    def messages(pool: list) -> list:
        return pool

    @staticmethod
    def sender(ring: SpscRing) -> Callable:
        push, encode = ring.push_tagged, encode_batch

        def send(batches):
            for batch in batches:
                kind, body = encode(batch)
                while not push(kind, 0, body):  # full: spin until the consumer makes room
                    pass

        return send

    @staticmethod
    def receiver(ring: SpscRing) -> Callable:
        # As the kernel's ring reader does: the body after the 5-byte tag
        # goes to the decoder for the frame's kind.
        pop, decoders = ring.pop, DECODERS

        def receive(n):
            for _ in range(n):
                while (frame := pop()) is None:  # empty: spin
                    pass
                batch = decoders[frame[0]](frame[5:])
            return batch  # a new list: no view into the ring outlives this call

        return receive


class RingRaw(Ring):
    """The ring, transport only: the frames are encoded before the clock starts
    and never decoded, but for the last one, after the clock has stopped.

    Ring's loops less the codec, rather than Ring's loops calling a codec hook
    that does nothing here: a hook would add a call per message to both."""

    @staticmethod
    def messages(pool: list) -> list:
        return list(map(encode_batch, pool))

    @staticmethod
    def sender(ring: SpscRing) -> Callable:
        push = ring.push_tagged

        def send(frames):
            for kind, body in frames:
                while not push(kind, 0, body):
                    pass

        return send

    @staticmethod
    def receiver(ring: SpscRing) -> Callable:
        pop = ring.pop

        def receive(n):
            for _ in range(n):
                while (frame := pop()) is None:
                    pass
            return frame  # a view into the ring, valid until the next pop

        return receive

    @staticmethod
    def unpack(frame):
        return decode(frame[0], frame[5:])


class Pickled(Channel):
    """A channel that pickles each batch itself: the producer calls `put(batch)`
    once a message, the consumer `get()`, which waits for the next one."""

    put: Callable[[list], object]
    get: Callable[[], list]

    @contextmanager
    def sending(self, pool: list):
        put = self.put

        def send(batches):
            for batch in batches:
                put(batch)

        yield send, pool

    @contextmanager
    def receiving(self):
        get = self.get

        def receive(n):
            for _ in range(n):
                batch = get()
            return batch

        yield receive


class MpQueue(Pickled):
    """multiprocessing.Queue: `put(batch)` hands it to a feeder thread, which pickles it."""

    def __init__(self) -> None:
        self.q = CTX.Queue()
        self.put, self.get = self.q.put, self.q.get

    def close(self) -> None:
        self.q.close()
        self.q.join_thread()

    @contextmanager
    def sending(self, pool: list):
        with super().sending(pool) as end:
            yield end
        # Still on the producer's clock: its feeder thread has pickled and
        # written everything only once this returns.
        self.close()


class MpPipe(Pickled):
    """multiprocessing.Pipe: a duplex pipe (a socket pair); `send` pickles, `recv` unpickles."""

    def __init__(self) -> None:
        self.conns = CTX.Pipe()
        self.get, self.put = self.conns[0].recv, self.conns[1].send  # section 1: one way

    def close(self) -> None:
        for conn in self.conns:
            conn.close()

    @contextmanager
    def side(self, i: int, hot: bool):
        conn = self.conns[i]  # section 3: both ways, one end each
        if hot:  # spin on poll(), then recv() what has arrived
            ready, recv = conn.poll, conn.recv
            yield conn.send, lambda: recv() if ready() else None
        else:
            yield conn.send, conn.recv


class Fifo(Pickled):
    """faster-fifo Queue: `put(batch)` pickles; `get_many()` takes every message
    waiting under one lock."""

    def __init__(self, size: int = FIFO_BYTES) -> None:
        self.q = faster_fifo.Queue(max_size_bytes=size)
        self.put = partial(self.q.put, block=True, timeout=TIMEOUT)

    def close(self) -> None:
        self.q.close()

    @contextmanager
    def receiving(self):
        get_many = self.q.get_many

        def receive(n):
            got = 0
            while got < n:
                batches = get_many(True, TIMEOUT, n - got)
                got += len(batches)
            return batches[-1]

        yield receive


# -- 1: throughput -----------------------------------------------------------------
#
# A run: the producer sends `warm` messages, the consumer receives them and sets
# `go`; the producer then takes its start time and sends `n` messages; the
# consumer takes its end time once it has received (and, but for the transport-only
# ring, decoded) the last message.
# perf_counter is CLOCK_MONOTONIC, one clock for every process on the machine.


def produce(channel, pool: list, warm: int, n: int, go) -> tuple[float, float]:
    """The producer process: (start time, CPU seconds spent sending)."""
    with channel.sending(pool) as (send, messages):
        messages = cycle(messages)
        send(islice(messages, warm))
        go.wait()
        start, cpu = perf(), cpu_time()
        send(islice(messages, n))
    return start, cpu_time() - cpu  # after the end is closed: mp.Queue flushes there


def consume(channel, pool: list, warm: int, n: int, go) -> tuple[float, float, bool]:
    """The consumer process: (end time, CPU seconds spent receiving, whether
    the last batch received is the last one sent)."""
    with channel.receiving() as receive:
        receive(warm)
        go.set()
        cpu = cpu_time()
        last = receive(n)
        end, cpu = perf(), cpu_time() - cpu
        ok = channel.unpack(last) == pool[(warm + n - 1) % len(pool)]
        del last  # it may be a view into the ring: let it go before the ring closes
    return end, cpu, ok


# label -> channel; None: not installed
THROUGHPUT: dict[str, type[Channel] | None] = {
    "ours: SpscRing (encode_batch + push_tagged / pop + decode)": Ring,
    "ours: SpscRing, transport only (pre-encoded, no decode)": RingRaw,
    "multiprocessing.Queue (put / get, pickle)": MpQueue,
    "multiprocessing.Pipe (send / recv, pickle)": MpPipe,
    "faster-fifo Queue (put / get_many, pickle)": Fifo if faster_fifo else None,
}
RING = next(iter(THROUGHPUT))
MPQ = "multiprocessing.Queue (put / get, pickle)"


def throughput_run(make: type[Channel], pool: list, n: int) -> tuple[float, float, float]:
    """One producer -> consumer run of `n` messages: (records/s, the producer's
    CPU time / wall time, the consumer's CPU time / wall time)."""
    warm = max(5, min(1000, n // 20))
    go = CTX.Event()
    with make() as channel:
        (start, cpu_p), (end, cpu_c, ok) = run_pair([
            (produce, (channel, pool, warm, n, go)), (consume, (channel, pool, warm, n, go))])
    if not ok:
        raise AssertionError(f"{make.__name__}: the last batch received is not the last one sent")
    wall = end - start
    return n * len(pool[0]) / wall, cpu_p / wall, cpu_c / wall


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


# -- 1b: where a message's time goes at one record per message ---------------------
#
# One process fills a ring with `COST_MESSAGES` frames and drains it, in turn,
# with and without the codec, so each side's work is timed alone (no spinning,
# no second core): the producer's push_tagged of a pre-encoded body, or
# encode_batch + push_tagged; the consumer's pop, or pop + the tag strip +
# decode.

COST_MESSAGES = 5_000


def _cost_loops(ring, batch: list) -> dict[str, Callable[[int], None]]:
    push, pop, encode, decoders = ring.push_tagged, ring.pop, encode_batch, DECODERS
    kind, body = encode(batch)

    def push_frame(n):
        for _ in range(n):
            push(kind, 0, body)

    def push_batch(n):
        for _ in range(n):
            kind, body = encode(batch)
            push(kind, 0, body)

    def pop_frame(n):
        for _ in range(n):
            pop()

    def pop_batch(n):
        for _ in range(n):
            frame = pop()
            decoders[frame[0]](frame[5:])

    return {"push": push_frame, "encode + push": push_batch, "pop": pop_frame, "pop + decode": pop_batch}


def section_costs(rounds: int) -> list[str]:
    batch = make_pool(1)[0]
    times: dict[str, list[float]] = {}
    ring = SpscRing.create(RING_BYTES, prefix=PREFIX)
    gc.collect()
    gc.disable()
    try:
        loops = _cost_loops(ring, batch)
        for _ in range(rounds):
            for fill, drain in (("push", "pop"), ("encode + push", "pop + decode")):
                for name in (fill, drain):
                    start = perf()
                    loops[name](COST_MESSAGES)
                    times.setdefault(name, []).append((perf() - start) / COST_MESSAGES * 1e9)
    finally:
        gc.enable()
        ring.close()
        ring.unlink()
    ns = {name: statistics.median(values) for name, values in times.items()}
    rows = [
        ["producer", "SpscRing.push_tagged of a pre-encoded body", ns["push"], ""],
        ["producer", "encode_batch + push_tagged", ns["encode + push"],
         ns["encode + push"] - ns["push"]],
        ["consumer", "SpscRing.pop", ns["pop"], ""],
        ["consumer", "pop + tag strip (frame[5:]) + decode", ns["pop + decode"],
         ns["pop + decode"] - ns["pop"]],
    ]
    return [table(
        f"1b. one record per message: each side's work alone, in one process (ns a message; median of "
        f"{rounds} rounds of {COST_MESSAGES:,} messages)",
        ["side", "work", "ns / message", "of which codec"], rows)]


# -- 2: the ring at 1000 records per message vs msgspec's decode rate ----------------


def codec_rate(pool: list, bodies: list, n: int, what: str) -> float:
    """records/s of `n` batches in this process: msgspec's own decode of the
    same records, encoded by msgspec as a list of tuples and decoded back into
    one by `Decoder(list[tuple])` ("msgspec"), `net._codec.decode` of their
    encodings `bodies` ("decode") or `net._codec.encode_batch` ("encode")."""
    plain = msgspec.msgpack.Decoder(list[tuple]).decode
    rows = [msgspec.msgpack.encode(batch) for batch in pool]  # msgspec's own, whatever the codec sends
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
            for body in islice(cycle(rows), n):
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
#
# The pinger (side 0) sends a message and waits for it to come back, `warm`
# times unmeasured and then `rounds` times timed; the ponger (side 1) sends
# every message straight back until STOP.

MESSAGE = b"0123456789abcdef"  # 16 bytes
STOP = b""


class RingPair(Channel):
    """Two rings, one each way; side i pushes into `rings[i]`, pops from the other."""

    def __init__(self) -> None:
        self.rings = (Ring(4096), Ring(4096))

    def close(self) -> None:
        for ring in self.rings:
            ring.close()

    @contextmanager
    def side(self, i: int, hot: bool):
        assert hot, "pop() never waits: a ring side always spins"
        with self.rings[i].attached() as out, self.rings[1 - i].attached() as inbox:
            yield out.push, inbox.pop


class QueuePair(Channel):
    """Two queues (`MpQueue` or `Fifo`), one each way; side i puts into `queues[i]`,
    gets from the other: blocking `get()`, or spinning on `get_nowait()` when hot."""

    def __init__(self, make: Callable[[], MpQueue | Fifo]) -> None:
        self.queues = (make(), make())

    def close(self) -> None:
        for q in self.queues:
            q.close()

    @contextmanager
    def side(self, i: int, hot: bool):
        inbox = self.queues[1 - i].q
        yield self.queues[i].q.put, nowait(inbox) if hot else partial(inbox.get, True, TIMEOUT)


def nowait(q) -> Callable[[], object]:
    """poll() that spins on `q.get_nowait()`: None while the queue is empty."""
    get, empty = q.get_nowait, queue.Empty

    def poll():
        try:
            return get()
        except empty:
            return None

    return poll


def ping(channel, hot: bool, warm: int, rounds: int) -> list[int]:
    """Side 0: the round-trip times (ns) of the last `rounds` of `warm + rounds` pings."""
    with channel.side(0, hot) as (send, poll):
        samples = []
        for _ in range(warm + rounds):
            start = perf_ns()
            send(MESSAGE)
            while poll() is None:  # spinning; a blocking poll waits inside instead
                pass
            samples.append(perf_ns() - start)
        send(STOP)
    return samples[warm:]


def pong(channel, hot: bool) -> None:
    """Side 1: sends every message back until STOP."""
    with channel.side(1, hot) as (send, poll):
        _echo(send, poll)


def _echo(send: Callable, poll: Callable) -> None:
    # A function of its own so that the last ring frame it holds (a view into
    # the ring) is dropped when it returns, before the ring closes.
    while True:
        message = poll()
        if message is None:
            continue
        if not len(message):  # STOP
            return
        send(message)


FIFO_PAIR = partial(QueuePair, partial(Fifo, 1 << 16))

# label -> (channel, hot); None: not installed
LATENCY: dict[str, tuple[Callable[[], Channel], bool] | None] = {
    "ours: SpscRing pair, both sides spin on pop()": (RingPair, True),
    "multiprocessing.Pipe, blocking recv()": (MpPipe, False),
    "multiprocessing.Pipe, spin on poll() then recv()": (MpPipe, True),
    "multiprocessing.Queue, blocking get()": (partial(QueuePair, MpQueue), False),
    "faster-fifo Queue, blocking get()": (FIFO_PAIR, False) if faster_fifo else None,
    "faster-fifo Queue, spin on get_nowait()": (FIFO_PAIR, True) if faster_fifo else None,
}
RING_RTT = next(iter(LATENCY))
PIPE_RTT = "multiprocessing.Pipe, blocking recv()"


def round_trips(entry: tuple[Callable[[], Channel], bool], warm: int, rounds: int) -> list[float]:
    """Round-trip times (us) of `rounds` pings after `warm` unmeasured ones."""
    make, hot = entry
    with make() as channel:
        samples, _ = run_pair([(ping, (channel, hot, warm, rounds)), (pong, (channel, hot))])
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
        reps, per_run, decode_records, rtt_reps, warm, rounds, cost_rounds = (
            2, {1: 30_000, 10: 100_000, 100: 300_000, 1000: 500_000}, 500_000, 1, 300, 2_000, 5)
    else:
        reps, per_run, decode_records, rtt_reps, warm, rounds, cost_rounds = (
            7, {1: 60_000, 10: 300_000, 100: 1_000_000, 1000: 2_000_000}, 2_000_000, 5, 1_000, 5_000, 31)
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
                    lambda: section_costs(cost_rounds),
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
