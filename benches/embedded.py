"""Request latency of an aiohttp server that runs a pipeline on its own loop.

    python -m benches.embedded            # full run (about a minute)
    python -m benches.embedded --quick    # smoke test (~15 s)

The server (a process of its own, uvloop) answers `GET /hello` with a few
bytes, as a health check or a cache hit would. On request it runs the word
count of benches/latency.py table 5 (120,000 lines of 13 words,
`from_iterable(lines).flat_map(str.split).key_by(...).count()`) with
`await run_async(flow)` on its own loop, back to back, while it keeps
answering. A client in another process sends requests open-loop at a fixed
rate, each at its scheduled time over a pool of keep-alive connections, and
times each from when it was due (so a server that stalls is charged for
every request that waited, not only the one it held: no coordinated
omission). Two phases, taken in turn in every round so that a noisy
stretch of the shared machine hits both alike:

* idle: the same server with nothing else to do (the floor: the client, the
  loopback and the machine's own noise);
* pipeline: the server running the word count meanwhile.

The pipeline's lines/s while serving are beside its lines/s in the same
server with no requests, every run's counts are checked against a plain
loop's, and the server's garbage collections while the pipeline ran are
counted and timed (per generation). Target: p99 <= 3 ms with the pipeline
running.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import subprocess
import sys
import time
import urllib.request

import uvloop

from benches._report import machine, percentile, table
from benches.pipelines import make_lines, plain_wordcount, word_key
from kernel import Dataflow, run_async

LINES = 120_000
WORDS_PER_LINE = 13
TARGET_P99_MS = 3.0


# -- the server ------------------------------------------------------------------


class Collections:
    """The server's garbage collections: how many, and the longest pause,
    per generation, since `reset()`."""

    def __init__(self) -> None:
        self.reset()
        self._started = 0.0
        gc.callbacks.append(self._callback)

    def reset(self) -> None:
        self.count = [0, 0, 0]
        self.longest = [0.0, 0.0, 0.0]

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.count[generation] += 1
        self.longest[generation] = max(self.longest[generation], time.perf_counter() - self._started)


class Pipelines:
    """The word count, run back to back on the server's loop while started."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.reference = plain_wordcount(lines)
        self.task: asyncio.Task | None = None
        self.stopping = False
        self.runs: list[float] = []  # seconds per run
        self.wrong = 0  # runs whose counts differ from the plain loop's
        self.collections = Collections()

    async def run_once(self) -> float:
        flow = Dataflow("wordcount")
        out = flow.from_iterable(self.lines).flat_map(str.split).key_by(word_key).count().collect()
        start = time.perf_counter()
        await run_async(flow)
        elapsed = time.perf_counter() - start
        if dict(out.items) != self.reference:
            self.wrong += 1
        return elapsed

    async def loop(self) -> None:
        while not self.stopping:
            self.runs.append(await self.run_once())

    def start(self) -> None:
        self.stopping = False
        self.runs.clear()
        self.collections.reset()
        self.task = asyncio.get_running_loop().create_task(self.loop())

    async def stop(self) -> dict:
        self.stopping = True
        await self.task
        return {"runs": len(self.runs), "seconds": self.runs, "wrong": self.wrong,
                "collections": self.collections.count, "longest": self.collections.longest}


async def serve() -> None:
    from aiohttp import web

    pipelines = Pipelines(make_lines(LINES, WORDS_PER_LINE))
    await pipelines.run_once()  # warm: every module imported, every code path run once
    gc.collect()  # and what the set-up left behind collected before anything is measured
    hello = web.Response(text="hello")

    async def say_hello(request):
        return web.Response(body=hello.body)

    async def start(request):
        pipelines.start()
        return web.json_response({"started": True})

    async def stop(request):
        return web.json_response(await pipelines.stop())

    async def alone(request):
        """The pipeline once, with no requests coming: its lines/s alone."""
        return web.json_response({"seconds": await pipelines.run_once(), "wrong": pipelines.wrong})

    app = web.Application()
    app.add_routes([web.get("/hello", say_hello), web.post("/pipeline/start", start),
                    web.post("/pipeline/stop", stop), web.post("/pipeline/alone", alone)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it
    await runner.cleanup()


# -- the client ------------------------------------------------------------------


async def client(url: str, rate: float, seconds: float, warmup: float) -> list[float]:
    """Latencies (ms) of GETs sent open-loop at `rate` per second for
    `seconds`, each timed from when it was due; the first `warmup` seconds
    (connections opening) are left out."""
    import aiohttp

    loop = asyncio.get_running_loop()
    now = time.perf_counter  # (the loop's own clock counts whole milliseconds on uvloop)
    latencies: list[tuple[float, float]] = []
    connector = aiohttp.TCPConnector(limit=32)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(due: float) -> None:
            async with session.get(url) as response:
                await response.read()
            latencies.append((due, (now() - due) * 1e3))

        start = now()
        total = int((seconds + warmup) * rate)
        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - now()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(due)))
        await asyncio.gather(*tasks)
    return [ms for due, ms in latencies if due >= start + warmup]


# -- the benchmark ---------------------------------------------------------------


def post(port: int, path: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def measure(port: int, rate: float, seconds: float) -> list[float]:
    """Runs the client in a process of its own; its latencies (ms)."""
    out = subprocess.run(
        [sys.executable, "-m", "benches.embedded", "--client", f"http://127.0.0.1:{port}/hello",
         "--rate", str(rate), "--seconds", str(seconds)],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second (default 500)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per phase")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of (idle, pipeline)")
    args = parser.parse_args(argv)
    if args.serve:
        uvloop.run(serve())
        return
    if args.client:
        print(json.dumps(uvloop.run(client(args.client, args.rate, args.seconds, 0.3))))
        return
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    rounds = args.rounds or (1 if args.quick else 3)
    print(machine())
    print()
    server = subprocess.Popen([sys.executable, "-m", "benches.embedded", "--serve"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline().split()[1])
        print(table_of(port, args.rate, seconds, rounds))
    finally:
        server.stdin.close()
        server.wait(timeout=30)


def table_of(port: int, rate: float, seconds: float, rounds: int) -> str:
    idle: list[float] = []
    busy: list[float] = []
    idle_p99s, busy_p99s, serving, alone = [], [], [], []
    collections, longest = [0, 0, 0], [0.0, 0.0, 0.0]
    wrong = 0
    for _ in range(rounds):
        lat = measure(port, rate, seconds)
        idle += lat
        idle_p99s.append(percentile(lat, 99))
        post(port, "/pipeline/start")
        lat = measure(port, rate, seconds)
        stats = post(port, "/pipeline/stop")
        busy += lat
        busy_p99s.append(percentile(lat, 99))
        serving += stats["seconds"]
        wrong += stats["wrong"]
        collections = [a + b for a, b in zip(collections, stats["collections"])]
        longest = [max(a, b) for a, b in zip(longest, stats["longest"])]
        once = post(port, "/pipeline/alone")
        alone.append(once["seconds"])
        wrong += once["wrong"]
    assert wrong == 0, f"{wrong} pipeline runs counted wrong"
    alone_rate = LINES / statistics.median(alone)
    serving_rate = LINES / statistics.median(serving)
    p99 = percentile(busy, 99)
    rows = [
        ["idle server", len(idle), percentile(idle, 50), percentile(idle, 99), max(idle_p99s),
         percentile(idle, 99.9), max(idle), "", "", ""],
        ["server running the word count (run_async)", len(busy), percentile(busy, 50), p99,
         max(busy_p99s), percentile(busy, 99.9), max(busy), serving_rate,
         f"<= {TARGET_P99_MS:g}", "PASS" if p99 <= TARGET_P99_MS else "FAIL"],
    ]
    return "\n".join([
        table(f"Request latency, aiohttp server on uvloop, client in another process at {rate:g} req/s "
              f"open-loop ({rounds} rounds of {seconds:g} s per phase; ms from when each request was due)",
              ["server", "requests", "p50 ms", "p99 ms", "p99 ms (worst round)", "p99.9 ms", "max ms",
               "pipeline lines/s", "target p99", "result"], rows),
        "",
        f"The word count ({LINES:,} lines x {WORDS_PER_LINE} words) alone in the same server: "
        f"{alone_rate:,.0f} lines/s (median of {len(alone)}); while serving: {serving_rate:,.0f} lines/s "
        f"(median of {len(serving)} runs), {serving_rate / alone_rate:.0%} of alone. The server's garbage "
        f"collections while it ran: {collections[0]:,} / {collections[1]:,} / {collections[2]:,} of "
        f"generations 0 / 1 / 2, the longest {longest[0] * 1e3:.2g} / {longest[1] * 1e3:.2g} / "
        f"{longest[2] * 1e3:.2g} ms.",
    ])


if __name__ == "__main__":
    main()
