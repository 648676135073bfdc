"""Topics between jobs (issue 18) on loopback: a coordinator, a publishing
job and a subscribing job, each a process of its own (forked, one core).

    python -m benches.topics            # full run (about a minute)
    python -m benches.topics --quick    # smoke test
    python -m benches.topics --joining 7  # joined frames vs a frame a batch only

1. throughput publisher -> subscriber: the publisher's source emits the same
   pre-built batch of `(int, str)` records (100 or 1000 a batch) as fast as
   it can, once the subscriber has joined; the subscriber counts records
   from its first batch to the end of the stream. Against the cluster
   link's own figure in the same run (benches/links.py's `ours`: the link
   alone, batches encoded once up front): a topic encodes every batch,
   goes through both jobs' dataflows and decodes on the way. So also a
   link carrying the same batches through the codec, each encoded by the
   sender and decoded by the receiver, as a cluster's exchange does: the
   like-for-like figure, the one the target is read against.
2. end-to-end latency of one record: the publisher emits one record every
   5 ms, stamped with `time.perf_counter()` (CLOCK_MONOTONIC: one clock
   for every process of the machine); the subscriber's sink takes the
   difference. p50 and p99.
3. a service call's round trip (`kernel.services.connect`, one call at a
   time, a small dict echoed by a sync handler) vs a raw aiohttp websocket
   request/response of the same msgpack bytes. The client, the serving job
   and the raw server are all pinned to one CPU, so that neither side of
   the comparison gets a cross-CPU wake-up the other does not.

Target (issue 18): topic throughput >= 80% of the link's at 100 and 1000
records a batch. "topic, a frame a batch": the same with the publisher's
joining of queued batches into one frame turned off (kernel/topics/_coalesce.py).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

import msgspec

from benches._report import machine, percentile, table

SECRET = "bench-secret"


def _env(port: int) -> None:
    os.environ["KERNEL_SECRET"] = SECRET
    os.environ["KERNEL_COORDINATOR"] = f"127.0.0.1:{port}"


def _free_port() -> int:
    from benches.links import free_port

    return free_port()


class Coordinator:
    def __init__(self) -> None:
        self.port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="bench-topics-")
        env = dict(os.environ, KERNEL_SECRET=SECRET)
        self.log = open(os.path.join(self.dir, "coordinator.log"), "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "kernel", "coordinator", "--listen",
                                      f"127.0.0.1:{self.port}", "--data", self.dir],
                                     stdout=self.log, stderr=self.log, env=env)
        deadline = time.monotonic() + 30
        while b"coordinator listening" not in open(os.path.join(self.dir, "coordinator.log"), "rb").read():
            assert time.monotonic() < deadline, "the coordinator did not start"
            time.sleep(0.05)

    def subscribed(self, topic: str) -> bool:
        from kernel.topics._directory import Directory

        async def ask():
            directory = Directory(("127.0.0.1", self.port), SECRET.encode())
            try:
                status = await directory.request("status")
            finally:
                await directory.close()
            return any(t["name"] == topic and t["subscribers"] for t in status["topics"])

        return asyncio.run(ask())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.log.close()


# -- the jobs (forked processes) --------------------------------------------------------------


def publisher(port: int, topic: str, batch_size: int, batches: int, go, latency: bool) -> None:
    from kernel import Dataflow, Source, run

    _env(port)
    batch = [(i, f"word{i % 1000}") for i in range(batch_size)]

    class Fast(Source):
        def open(self, context):
            self.left = batches

        def poll(self):
            if not go.is_set():
                self.context.kernel.call_later(0.01, self.wake)
                return None
            if latency:
                self.emit([time.perf_counter()])
                self.left -= 1
                if self.left:
                    self.context.kernel.call_later(0.005, self.wake)
                    return None
                return False
            n = min(self.left, max(1, self.records_wanted // batch_size))
            for _ in range(n):
                self.emit(batch)
            self.left -= n
            return self.left > 0

    flow = Dataflow("bench-publisher")
    flow.source(Fast, name="fast").publish(topic, epoch_interval=1.0)
    run(flow)


def subscriber(port: int, topic: str, out, latency: bool) -> None:
    from kernel import Dataflow, Operator, run

    _env(port)

    class Count(Operator):
        def open(self, context):
            self.first = None
            self.records = 0
            self.delays = []

        def on_batch(self, port, batch):
            now = time.perf_counter()
            if latency:
                self.delays += [now - sent for sent in batch]
                return
            if self.first is None:
                self.first = now
            else:
                self.records += len(batch)  # (the first batch opens the clock)
            self.last = now

        def on_end(self):
            if latency:
                out.send(self.delays)
            else:
                out.send(self.records / (self.last - self.first))

    flow = Dataflow("bench-subscriber")
    flow.subscribe(topic, timeout=30).apply(Count, name="count")
    run(flow)


def _cpu_after(job, cpu):
    """`job` (publisher or subscriber), then its process's CPU seconds
    (user + system, all of its life) sent on `cpu`."""
    def run_then_report(*args) -> None:
        job(*args)
        times = os.times()
        cpu.send((job.__name__, times.user + times.system))

    return run_then_report


def topic_run(coordinator: Coordinator, batch_size: int, batches: int, latency: bool = False,
              cpu=None):
    """The subscriber's rate (records/s), or its delays (latency); `cpu`: a
    pipe's sending end, on which each job sends its CPU seconds."""
    if cpu is not None:
        return _with_cpu(coordinator, batch_size, batches, cpu)
    context = multiprocessing.get_context("fork")
    topic = f"bench-{batch_size}-{time.monotonic_ns()}"
    go = context.Event()
    out_recv, out_send = context.Pipe(duplex=False)
    pub = context.Process(target=publisher, args=(coordinator.port, topic, batch_size, batches, go, latency))
    sub = context.Process(target=subscriber, args=(coordinator.port, topic, out_send, latency))
    pub.start()
    sub.start()
    try:
        deadline = time.monotonic() + 30
        while not coordinator.subscribed(topic):
            assert time.monotonic() < deadline, "the subscriber did not join"
            time.sleep(0.05)
        time.sleep(0.3)  # it has registered: let it connect
        go.set()
        return out_recv.recv()
    finally:
        for proc in (pub, sub):
            proc.join(30)
            if proc.is_alive():
                proc.kill()


def unjoined(coordinator: Coordinator, batch_size: int, batches: int, cpu=None) -> float:
    """`topic_run` with the publisher sending every batch as a frame of its
    own (kernel/topics/_coalesce.py off): what joining the batches queued
    for a subscriber gains."""
    from kernel.topics import _publish

    joinable, _publish.JOINABLE = _publish.JOINABLE, frozenset()  # (the jobs fork from here)
    try:
        return topic_run(coordinator, batch_size, batches, cpu=cpu)
    finally:
        _publish.JOINABLE = joinable


def _with_cpu(coordinator: Coordinator, batch_size: int, batches: int, cpu):
    global publisher, subscriber
    plain = publisher, subscriber
    publisher, subscriber = (_cpu_after(job, cpu) for job in plain)
    try:
        return topic_run(coordinator, batch_size, batches)
    finally:
        publisher, subscriber = plain


def joining(coordinator: Coordinator, reps: int) -> None:
    """Joined frames vs a frame a batch (kernel/topics/_coalesce.py),
    interleaved: the rate and each job's CPU a record (what a shared
    machine moves least; it includes each job's start, the same for both)."""
    context = multiprocessing.get_context("fork")
    cpu_recv, cpu_send = context.Pipe(duplex=False)
    rows = []
    for batch_size, batches in ((100, 50_000), (1000, 5_000)):
        found: dict[str, list] = {"joined": [], "a frame a batch": []}
        for _ in range(reps):
            for how, samples in found.items():
                run = topic_run if how == "joined" else unjoined
                rate = run(coordinator, batch_size, batches, cpu=cpu_send)
                spent = dict(cpu_recv.recv() for _ in range(2))
                n = batch_size * batches
                samples.append((rate, spent["publisher"] / n * 1e9, spent["subscriber"] / n * 1e9))
        for how, samples in found.items():
            rate, pub, sub = (sorted(column)[reps // 2] for column in zip(*samples))
            rows.append([batch_size, how, f"{rate:,.0f}", f"{pub:.0f}", f"{sub:.0f}"])
    print(table(f"joining queued batches into one frame (median of {reps}, interleaved)",
                ["records/batch", "publisher sends", "records/s", "publisher CPU ns/record",
                 "subscriber CPU ns/record"], rows))


# -- a cluster link carrying the batches through the codec, as an exchange does ----------


def _codec_receiver(port: int, ready) -> None:
    import uvloop
    from kernel.net._codec import decode
    from kernel.net._links import LinkServer

    async def main():
        links = {}

        def on_frame_for(peer):
            def on_frame(channel, kind, body):
                link = links[peer]
                link.consumed(channel, link.size(body))
                if kind == 0x3F:  # done: answer
                    return link.send(channel, kind, b"")
                decode(kind, body)
                return None

            return on_frame

        server = LinkServer("127.0.0.1", port, SECRET, 0, {0}, on_frame_for,
                            on_link=lambda link: links.__setitem__(link.peer, link))
        await server.start()
        ready.set()
        await asyncio.sleep(3600)

    uvloop.run(main())


def _codec_sender(port: int, batch_size: int, count: int, out) -> None:
    import uvloop
    from kernel.net._codec import encode_batch
    from kernel.net._links import dial

    async def main():
        replies: asyncio.Queue = asyncio.Queue()
        link, session = await dial(f"http://127.0.0.1:{port}", SECRET, 1, {0},
                                   lambda channel, kind, body: replies.put_nowait(kind))
        reader = asyncio.ensure_future(link.run())
        batch = [(i, f"word{i % 1000}") for i in range(batch_size)]
        start = time.perf_counter()
        for _ in range(count):
            kind, body = encode_batch(batch)
            await link.send(0, kind, body)
        await link.send(0, 0x3F, b"")
        await replies.get()
        elapsed = time.perf_counter() - start
        out.send(batch_size * count / elapsed)
        await link.close()
        await session.close()
        reader.cancel()

    uvloop.run(main())


def link_with_codec(batch_size: int, count: int) -> float:
    context = multiprocessing.get_context("fork")
    port = _free_port()
    ready = context.Event()
    receiver = context.Process(target=_codec_receiver, args=(port, ready), daemon=True)
    receiver.start()
    try:
        ready.wait(10)
        out_recv, out_send = context.Pipe(duplex=False)
        sender = context.Process(target=_codec_sender, args=(port, batch_size, count, out_send), daemon=True)
        sender.start()
        result = out_recv.recv()
        sender.join(10)
        return result
    finally:
        receiver.kill()
        receiver.join(5)


# -- services ---------------------------------------------------------------------------------


def _one_cpu() -> int:
    """The CPU the round trips of section 3 run on, every process of them:
    left to the scheduler, the server landed on the client's CPU or on the
    other one by chance (a cross-CPU wake-up each way: 17 against 109 us at
    the median in one run), as benches/links.py found for its round trip."""
    return min(os.sched_getaffinity(0))


def service_job(port: int) -> None:
    from kernel import Dataflow, run

    os.sched_setaffinity(0, {_one_cpu()})
    _env(port)
    flow = Dataflow("bench-service")
    flow.serve("echo", lambda request: request)
    run(flow)


def raw_echo_server(port: int, ready) -> None:
    from aiohttp import web

    os.sched_setaffinity(0, {_one_cpu()})

    async def handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            data = message.data
            request_id, body = data[:9], msgspec.msgpack.decode(data[9:])  # as the service does
            await ws.send_bytes(request_id + msgspec.msgpack.encode(body))
        return ws

    async def main():
        app = web.Application()
        app.router.add_get("/raw", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.sleep(3600)

    import uvloop

    uvloop.run(main())


def service_round_trips(coordinator: Coordinator, rounds: int) -> dict[str, list[float]]:
    import aiohttp
    import uvloop

    import kernel.services

    context = multiprocessing.get_context("fork")
    job = context.Process(target=service_job, args=(coordinator.port,), daemon=True)
    raw_port = _free_port()
    ready = context.Event()
    raw = context.Process(target=raw_echo_server, args=(raw_port, ready), daemon=True)
    job.start()
    raw.start()
    ready.wait(10)
    request = {"key": "sensor-17", "value": 3}
    _env(coordinator.port)

    async def main():
        samples: dict[str, list[float]] = {"service": [], "raw": []}
        async with kernel.services.connect("echo", timeout=30) as svc, aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"http://127.0.0.1:{raw_port}/raw")
            for block in range(rounds // 100 + 2):
                for _ in range(100):  # alternating blocks: load from elsewhere falls on both alike
                    start = time.perf_counter_ns()
                    await svc.call(request)
                    if block >= 2:
                        samples["service"].append((time.perf_counter_ns() - start) / 1000)
                for _ in range(100):
                    start = time.perf_counter_ns()
                    await ws.send_bytes(b"\0" * 9 + msgspec.msgpack.encode(request))
                    msgspec.msgpack.decode((await ws.receive()).data[9:])
                    if block >= 2:
                        samples["raw"].append((time.perf_counter_ns() - start) / 1000)
            await ws.close()
        return samples

    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {_one_cpu()})  # the client beside its servers
    try:
        return uvloop.run(main())
    finally:
        os.sched_setaffinity(0, allowed)
        for proc in (job, raw):
            proc.kill()
            proc.join(5)


def main(argv: list[str] | None = None) -> None:
    from benches.links import measure, send_batches

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    parser.add_argument("--joining", type=int, metavar="REPS",
                        help="only compare joined frames with a frame a batch, REPS times interleaved")
    args = parser.parse_args(argv)
    if args.joining is not None:
        if args.joining < 1:
            parser.error("--joining must be at least 1")
        coordinator = Coordinator()
        try:
            joining(coordinator, args.joining)
        finally:
            coordinator.close()
        return
    reps, scale = (1, 10) if args.quick else (3, 1)
    print(machine())
    print()
    coordinator = Coordinator()
    try:
        rows = []
        for batch_size, batches in ((100, 10_000), (1000, 2_000)):
            batches //= scale
            topic_rates, link_rates, codec_rates, unjoined_rates = [], [], [], []
            for _ in range(reps):  # interleaved
                topic_rates.append(topic_run(coordinator, batch_size, batches))
                unjoined_rates.append(unjoined(coordinator, batch_size, batches))
                link_rates.append(measure("ours", send_batches, batch_size, batches))
                codec_rates.append(link_with_codec(batch_size, batches))
            topic_rate, link_rate, codec_rate, unjoined_rate = (
                sorted(rates)[reps // 2] for rates in (topic_rates, link_rates, codec_rates, unjoined_rates))
            ratio = topic_rate / link_rate
            rows.append([batch_size, f"{link_rate:,.0f}", f"{codec_rate:,.0f}", f"{topic_rate:,.0f}",
                         f"{unjoined_rate:,.0f}", f"{ratio:.0%}", f"{topic_rate / codec_rate:.0%}", ">= 80%",
                         "met" if ratio >= 0.8 else "MISSED"])
        print(table(f"1. throughput, records/s (median of {reps})",
                    ["records/batch", "link, frames pre-encoded (benches/links.py)", "link + codec", "topic",
                     "topic, a frame a batch", "topic/link", "topic/(link + codec)", "target (topic/link)",
                     "result"], rows))
        print()
        delays = sorted(d * 1e6 for d in topic_run(coordinator, 1, 400 // scale, latency=True))
        print(table("2. end-to-end latency of one record, publisher source -> subscriber operator (us)",
                    ["records", "p50", "p99"],
                    [[len(delays), f"{percentile(delays, 50):.0f}", f"{percentile(delays, 99):.0f}"]]))
        print()
        samples = service_round_trips(coordinator, 2_000 // scale)
        rows = []
        for which, kept in samples.items():
            kept.sort()
            rows.append([which, len(kept), f"{percentile(kept, 50):.0f}", f"{percentile(kept, 99):.0f}"])
        print(table("3. request/response round trip (us)", ["", "calls", "p50", "p99"], rows))
    finally:
        coordinator.close()


if __name__ == "__main__":
    main()
