"""Scheduling-latency micro-benchmarks, side by side with asyncio and uvloop.

    python -m benches.latency            # full run (about a minute)
    python -m benches.latency --quick    # smoke test (~15 s)

Five sections, one table each:

1. `await cooperate()` while the budget lasts (ns per call) vs `asyncio.sleep(0)`.
2. a real yield: `cooperate()` once the budget is spent vs `asyncio.sleep(0)`.
3. activation latency: an operator emits, how long until the next one's
   `on_batch` runs (per hop) vs an `asyncio.Queue` handoff and a `call_soon` hop.
4. wakeup latency of a host task while N busy tasks hog the loop.
5. the host loop's longest stall while a pipeline runs: 2,000,000 records
   through map/filter/key_by/count, and the word count of the issue that
   made the budget hold (120,000 lines of 13 words, whose flat_map grows
   each batch 13-fold).

Every figure is the median over several repetitions: the benchmark machine is
a shared, noisy 2-core box, and a single run can be off by 2x.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Callable, Coroutine

import uvloop

import kernel.scheduling._kernel as kernel_internals
from benches._report import machine, median_of, percentile, table
from benches.pipelines import make_lines, plain_wordcount, word_key
from kernel import Dataflow, Operator, Source, run_async
from kernel.lowlevel import Kernel, cooperate, current_kernel

perf_ns = time.perf_counter_ns

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def on_loop(kind: str, main: Callable[[], Coroutine], *, gc_off: bool = True):
    """Run `main()` to completion on a fresh event loop of `kind`."""
    # The cyclic collector would add random pauses to the micro-benchmarks'
    # percentiles, and they allocate little, so it is off for them; the stall
    # benchmark keeps it on, as a real application would.
    gc.collect()
    if gc_off:
        gc.disable()
    try:
        with asyncio.Runner(loop_factory=LOOPS[kind]) as runner:
            return runner.run(main())
    finally:
        gc.enable()


async def on_kernel(fn: Callable[[], Coroutine], **kernel_options):
    """Run the coroutine `fn()` as a task spawned on a fresh `Kernel`; its result."""
    out = []

    async def task():
        out.append(await fn())

    kernel = Kernel(**kernel_options)
    kernel.spawn(task())
    await kernel.join()
    return out[0]


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


# -- 1 and 2: the cost of one await ----------------------------------------------


async def _empty_loop_ns(n: int) -> float:
    start = perf_ns()
    for _ in range(n):
        pass
    return (perf_ns() - start) / n


async def _await_ns(n: int, awaitable: Callable) -> float:
    """ns per `await awaitable()`, minus the cost of the bare `for` loop."""
    start = perf_ns()
    for _ in range(n):
        await awaitable()
    elapsed = (perf_ns() - start) / n
    return elapsed - await _empty_loop_ns(n)


def cooperate_ns(n: int, bound: bool, budget: float) -> float:
    async def measure():
        fn = current_kernel().cooperate if bound else cooperate
        return await _await_ns(n, fn)

    return on_loop("uvloop", lambda: on_kernel(measure, budget=budget))


def sleep0_ns(n: int, loop: str) -> float:
    sleep = asyncio.sleep
    return on_loop(loop, lambda: _await_ns(n, lambda: sleep(0)))


def interleaved(reps: int, fns: dict[str, Callable[[], float]]) -> dict[str, float]:
    """Median per entry of `fns`, the runs taken in turn (a, b, c, a, b, c...)
    so that a slow stretch of the shared machine hits every entry alike."""
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            runs[name].append(fn())
    return {name: statistics.median(values) for name, values in runs.items()}


def section_await(reps: int, n_fast: int, n_yield: int) -> list[str]:
    big = 10.0  # seconds: the budget never runs out during a measurement
    m = interleaved(reps, {
        "module": lambda: cooperate_ns(n_fast, False, big),
        "bound": lambda: cooperate_ns(n_fast, True, big),
        "spent": lambda: cooperate_ns(n_yield, False, 1e-9),
        "asyncio": lambda: sleep0_ns(n_yield, "asyncio"),
        "uvloop": lambda: sleep0_ns(n_yield, "uvloop"),
    })
    fast_mod, fast_bound, spent = m["module"], m["bound"], m["spent"]
    sleep = {loop: m[loop] for loop in LOOPS}
    fast = table(
        "1. await cooperate() while the budget lasts (ns per call, empty loop subtracted)",
        ["operation", "loop", "ns/call", "target", "result"],
        [
            ["await cooperate()  (module-level)", "uvloop + Kernel", fast_mod, "<= 100",
             verdict(fast_mod, 100)],
            ["await kernel.cooperate()  (bound)", "uvloop + Kernel", fast_bound, "<= 100",
             verdict(fast_bound, 100)],
            ["await asyncio.sleep(0)  (a real yield)", "asyncio", sleep["asyncio"], "", ""],
            ["await asyncio.sleep(0)  (a real yield)", "uvloop", sleep["uvloop"], "", ""],
        ],
    )

    # With the budget spent, cooperate() still reads the clock only every
    # _POLLS_PER_CLOCK_READ-th call, so only that fraction of the calls yield.
    # The per-yield cost is what is left once the fast calls are paid for.
    every = getattr(kernel_internals, "_POLLS_PER_CLOCK_READ", 1)
    per_yield = spent * every - fast_mod * (every - 1)
    real = table(
        "2. a real yield: cooperate() once the budget is spent (ns)",
        ["operation", "loop", "ns", "vs sleep(0) on uvloop"],
        [
            [f"await cooperate(), budget spent: per call (1 in {every} yields)", "uvloop + Kernel",
             spent, f"{spent / sleep['uvloop']:.2f}x"],
            ["await cooperate(), budget spent: per actual yield", "uvloop + Kernel",
             per_yield, f"{per_yield / sleep['uvloop']:.2f}x"],
            ["await asyncio.sleep(0)", "asyncio", sleep["asyncio"],
             f"{sleep['asyncio'] / sleep['uvloop']:.2f}x"],
            ["await asyncio.sleep(0)", "uvloop", sleep["uvloop"], "1.00x"],
        ],
    )
    return [fast, real]


# -- 3: activation latency ---------------------------------------------------------

HOPS = 10  # a record crosses 10 edges: source -> op1 -> ... -> op10


class _Probe:
    """What the source and the last operator of one run share."""

    def __init__(self, emits: int, in_flight_one: bool) -> None:
        self.emits = emits
        self.in_flight_one = in_flight_one
        self.source: Source | None = None
        self.samples: list[int] = []


class _StampSource(Source):
    """Emits 1-record batches holding the emit time (ns)."""

    def __init__(self, probe: _Probe) -> None:
        self.probe = probe
        self.left = probe.emits

    def open(self, context):
        self.probe.source = self

    def poll(self):
        if not self.left:
            return False
        self.left -= 1
        self.emit([perf_ns()])
        # One record in flight: sleep until the last operator wakes us, so
        # every tick holds exactly one activation and the figure is the pure
        # scheduling cost of a hop. Pipelined: ask to be polled again at once.
        return None if self.probe.in_flight_one else True


class _PassThrough(Operator):
    def on_batch(self, port, batch):
        self.emit(batch)


class _Last(Operator):
    def __init__(self, probe: _Probe) -> None:
        self.probe = probe

    def on_batch(self, port, batch):
        now = perf_ns()
        probe = self.probe
        probe.samples.append(now - batch[0])
        if probe.in_flight_one:
            probe.source.wake()


def ours_hop_ns(emits: int, in_flight_one: bool, chained: bool = True) -> float:
    """Per-hop latency. Operators on a forward edge are chained (the
    upstream's emit calls them directly); `chained=False` gives every hop a
    second, empty input, which defeats chaining, so each hop is a trip
    through the run queue."""
    probe = _Probe(emits, in_flight_one)
    flow = Dataflow("activation-latency")
    stream = flow.source(lambda: _StampSource(probe), name="stamp")
    extra = () if chained else (flow.from_iterable([], name="empty"),)
    for i in range(HOPS - 1):
        stream = stream.apply(_PassThrough, name=f"pass{i}", inputs=extra)
    stream.apply(lambda: _Last(probe), name="last", inputs=extra)
    on_loop("uvloop", lambda: run_async(flow))
    assert len(probe.samples) == emits
    return statistics.median(probe.samples) / HOPS


async def _queue_chain(emits: int) -> list[int]:
    """HOPS tasks passing each record on through asyncio.Queues, one in flight."""
    loop = asyncio.get_running_loop()
    queues = [asyncio.Queue() for _ in range(HOPS)]
    samples: list[int] = []
    done: list[asyncio.Future] = [loop.create_future()]

    async def stage(i: int) -> None:
        get = queues[i].get
        put = queues[i + 1].put_nowait if i + 1 < HOPS else None
        while (stamp := await get()) is not None:
            if put is not None:
                put(stamp)
            else:
                samples.append(perf_ns() - stamp)
                done[0].set_result(None)
        if put is not None:
            put(None)

    tasks = [asyncio.create_task(stage(i)) for i in range(HOPS)]
    for _ in range(emits):
        done[0] = loop.create_future()
        queues[0].put_nowait(perf_ns())
        await done[0]
    queues[0].put_nowait(None)
    await asyncio.gather(*tasks)
    return samples


async def _call_soon_chain(emits: int) -> list[int]:
    """HOPS `loop.call_soon` handoffs per record, one in flight."""
    loop = asyncio.get_running_loop()
    samples: list[int] = []
    finished = loop.create_future()
    left = [emits]

    def emit() -> None:
        if not left[0]:
            finished.set_result(None)
            return
        left[0] -= 1
        loop.call_soon(hop, 1, perf_ns())

    def hop(i: int, stamp: int) -> None:
        if i < HOPS:
            loop.call_soon(hop, i + 1, stamp)
        else:
            samples.append(perf_ns() - stamp)
            emit()

    emit()
    await finished
    return samples


def asyncio_hop_ns(chain, emits: int, loop: str) -> float:
    samples = on_loop(loop, lambda: chain(emits))
    assert len(samples) == emits
    return statistics.median(samples) / HOPS


def section_activation(reps: int, emits: int) -> list[str]:
    one = median_of(reps, lambda: ours_hop_ns(emits, True))
    piped = median_of(reps, lambda: ours_hop_ns(emits, False))
    queued = median_of(reps, lambda: ours_hop_ns(emits, True, chained=False))
    rows = [
        ["ours: Source -> 10 chained Operators, one record in flight", "uvloop + Kernel", one / 1e3,
         "<= 0.5", verdict(one / 1e3, 0.5)],
        ["ours: same, source always ready", "uvloop + Kernel", piped / 1e3, "", ""],
        ["ours: 10 Operators not chained (run-queue hop each), one in flight", "uvloop + Kernel",
         queued / 1e3, "", ""],
    ]
    for label, chain in (("asyncio.Queue handoff between 10 tasks", _queue_chain),
                         ("loop.call_soon hop", _call_soon_chain)):
        for loop in LOOPS:
            value = median_of(reps, lambda chain=chain, loop=loop: asyncio_hop_ns(chain, emits, loop))
            rows.append([label, loop, value / 1e3, "", ""])
    return [table(
        f"3. activation latency: emit -> downstream on_batch (us per hop, median of {emits:,} emits "
        f"over {HOPS} hops)",
        ["path", "loop", "us/hop", "target", "result"],
        rows,
    )]


# -- 4: wakeup latency under load ----------------------------------------------------

_WORK = range(100)  # ~1-2 us of pure-Python work per busy-loop turn


async def _wakeups(busy: int, ours: bool, samples: int, duration: float, min_samples: int) -> list[float]:
    """Wakeup latencies (us) of a host task parked on a future that a host
    "waker" task resolves every ~1 ms, while `busy` tasks spin."""
    loop = asyncio.get_running_loop()
    state = {"stop": False}
    parked: list[asyncio.Future | None] = [None]
    latencies: list[float] = []

    async def spin_ours() -> None:
        while not state["stop"]:
            sum(_WORK)
            await cooperate()

    async def spin_asyncio() -> None:
        sleep = asyncio.sleep
        while not state["stop"]:
            sum(_WORK)
            await sleep(0)

    async def sleeper() -> None:
        while not state["stop"]:
            fut = parked[0] = loop.create_future()
            sent = await fut
            if sent is not None:
                latencies.append((perf_ns() - sent) / 1e3)

    async def waker() -> None:
        await asyncio.sleep(0.01)  # let the busy tasks get going
        start = time.perf_counter()
        # At least `min_samples`, even when one wakeup takes a second (that
        # is the measurement); otherwise stop at `samples` or `duration`.
        while len(latencies) < min_samples or (
            len(latencies) < samples and time.perf_counter() - start < duration
        ):
            await asyncio.sleep(0.001)
            fut = parked[0]
            if fut is not None and not fut.done():  # else the sleeper is not back yet
                fut.set_result(perf_ns())
        state["stop"] = True
        if not parked[0].done():  # else the sleeper sees `stop` once it runs
            parked[0].set_result(None)

    spin = spin_ours if ours else spin_asyncio
    if ours:
        kernel = Kernel()
        for _ in range(busy):
            kernel.spawn(spin())
        await asyncio.gather(kernel.join(), sleeper(), waker())
    else:
        tasks = [asyncio.create_task(spin()) for _ in range(busy)]
        await asyncio.gather(sleeper(), waker(), *tasks)
    return latencies


def section_wakeup(reps: int, busy_counts: list[int], samples: int, duration: float) -> list[str]:
    rows = []
    variants = [("ours: busy tasks on a Kernel, await cooperate()", "uvloop", True),
                ("asyncio tasks, await asyncio.sleep(0)", "asyncio", False),
                ("asyncio tasks, await asyncio.sleep(0)", "uvloop", False)]
    for busy in busy_counts:
        for label, loop, ours in variants:
            p50s, p99s, count = [], [], 0
            for _ in range(reps):
                lat = on_loop(loop, lambda busy=busy, ours=ours: _wakeups(busy, ours, samples, duration, 3))
                p50s.append(percentile(lat, 50))
                p99s.append(percentile(lat, 99))
                count += len(lat)
            rows.append([busy, label, loop, statistics.median(p50s), statistics.median(p99s), count])
    return [table(
        "4. wakeup latency of a host task while N busy tasks run (us; median over runs)",
        ["busy tasks", "busy tasks yield with", "loop", "p50 us", "p99 us", "samples"],
        rows,
    )]


# -- 5: the host loop's longest stall while a pipeline runs ----------------------------


def _pipeline(n: int):
    flow = Dataflow("stall")
    out = (flow.from_iterable(range(n))
               .map(lambda x: x * 3)
               .filter(lambda x: x % 2 == 0)
               .key_by(lambda x: x % 1000)
               .count()
               .collect())
    return flow, out


WORDCOUNT_LINES, WORDS_PER_LINE = 120_000, 13


def _wordcount(lines: list[str]):
    flow = Dataflow("wordcount")
    return flow, flow.from_iterable(lines).flat_map(str.split).key_by(word_key).count().collect()


def _plain(n: int) -> dict:
    counts: dict = {}
    for x in range(n):
        y = x * 3
        if y % 2 == 0:
            k = y % 1000
            counts[k] = counts.get(k, 0) + 1
    return counts


async def _stalls(n: int, what: str) -> tuple[list[float], float]:
    """Stalls (ms) seen by a heartbeat sleeping 1 ms at a time while `what`
    runs, and the wall seconds `what` took."""
    gaps: list[float] = []
    running = [True]
    lines = _words(n) if what == "wordcount" else None  # made before the heartbeat starts

    async def heartbeat() -> None:
        last = time.perf_counter()
        while running[0]:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append((now - last - 0.001) * 1e3)
            last = now

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.005)  # the heartbeat is in its stride before the work starts
    gaps.clear()
    start = time.perf_counter()
    if what == "ours":
        flow, out = _pipeline(n)
        await run_async(flow)
        result = dict(out.items)
    elif what == "wordcount":
        flow, out = _wordcount(lines)
        await run_async(flow)
        result = dict(out.items)
    elif what == "plain":
        result = _plain(n)  # a synchronous loop inside a coroutine
    else:  # "idle": the heartbeat alone, the noise floor of the machine
        await asyncio.sleep(0.3)
        result = None
    wall = time.perf_counter() - start
    running[0] = False
    await beat
    if result is not None:
        assert result == (plain_wordcount(_words(n)) if what == "wordcount" else _plain_reference(n))
    return gaps, wall


_reference: dict[int, dict] = {}
_word_lines: dict[int, list[str]] = {}


def _words(n: int) -> list[str]:
    if n not in _word_lines:
        _word_lines[n] = make_lines(n, WORDS_PER_LINE)
    return _word_lines[n]


def _plain_reference(n: int) -> dict:
    if n not in _reference:
        _reference[n] = _plain(n)
    return _reference[n]


# (work, its size, row label, target max stall in ms or None)
def _stall_rows(n: int, lines: int) -> list[tuple]:
    return [
        ("idle", n, "nothing else running (noise floor)", None),
        ("ours", n, f"ours: await run_async(flow), {n:,} records", 10.0),
        ("wordcount", lines, f"ours: await run_async(word count), {lines:,} lines x {WORDS_PER_LINE} words",
         3.0),
        ("plain", n, f"plain synchronous loop in a coroutine, {n:,} records", None),
    ]


def section_stall(reps: int, n: int, lines: int) -> list[str]:
    rows = []
    runs: dict[str, list] = {what: [] for what, *_ in _stall_rows(n, lines)}
    for _ in range(reps):  # in turn, so that a noisy stretch hits every row alike
        for what, size, _, _ in _stall_rows(n, lines):
            runs[what].append(on_loop("uvloop", lambda what=what, size=size: _stalls(size, what),
                                      gc_off=False))
    for what, size, label, target in _stall_rows(n, lines):
        maxes = [max(gaps) for gaps, _ in runs[what]]
        p99s = [percentile(gaps, 99) for gaps, _ in runs[what]]
        walls = [wall for _, wall in runs[what]]
        # The verdict reads the median over runs of each run's longest stall:
        # the noise-floor row shows this VM alone pauses a process for several
        # ms now and then, which no scheduler can prevent.
        typical = statistics.median(maxes)
        rate = f"{size / statistics.median(walls):,.0f}/s" if what != "idle" else ""
        rows.append([label, typical, max(maxes), statistics.median(p99s), statistics.median(walls), rate,
                     f"<= {target:g}" if target else "", verdict(typical, target) if target else ""])
    return [table(
        "5. host loop stalls while a pipeline runs (heartbeat asyncio.sleep(1 ms) on uvloop; "
        "stall = gap - 1 ms)",
        ["work on the loop", "max ms (median)", "max ms (worst run)", "p99 ms", "work s", "records/s",
         "target", "result"],
        rows,
    )]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    args = parser.parse_args(argv)
    if args.quick:
        reps, n_fast, n_yield, emits, samples, duration, n_records = 3, 50_000, 5_000, 2_000, 30, 0.1, 200_000
        n_lines = 30_000
    else:
        reps, n_fast, n_yield, emits, samples, duration, n_records = (
            9, 500_000, 30_000, 20_000, 300, 0.6, 2_000_000)
        n_lines = WORDCOUNT_LINES
    print(machine())
    print()
    sections = [
        lambda: section_await(reps, n_fast, n_yield),
        lambda: section_activation(5 if not args.quick else 3, emits),
        # --quick leaves out 1000 busy tasks: ours needs ~1 s per wakeup there.
        lambda: section_wakeup(3, [1, 100] if args.quick else [1, 100, 1000], samples, duration),
        lambda: section_stall(3 if not args.quick else 1, n_records, n_lines),
    ]
    for section in sections:
        for text in section():
            print(text)
            print(flush=True)


if __name__ == "__main__":
    main()
