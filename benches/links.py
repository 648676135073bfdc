"""Links between processes: our authenticated, credit-controlled websocket
link (net/_links.py) vs a raw aiohttp websocket, on loopback.

    python -m benches.links            # full run (about a minute)
    python -m benches.links --quick    # smoke test

A receiver process and a sender process (forked, on uvloop), the same
pre-encoded batches of `(int, str)` records (net._codec.encode_batch, once)
either way:

1. throughput: the sender sends the frames back to back, then a last one the
   receiver answers; records/s at 1, 100 and 1000 records per frame. Ours:
   `Link.send` (credit per channel, a 4 MiB window, granted back as the
   receiver handles frames); raw: `ws.send_bytes` with nothing on top.
2. round trip of a 16-byte frame, echoed by the receiver: p50 and p99.
   One sender process holds both links and alternates blocks of round
   trips between them (it used to measure each in its own run, minutes
   apart on a busy machine: the ratio moved by 0.2x from run to run). The
   sender and both receivers are pinned to one CPU: left to the scheduler,
   each receiver landed on the sender's CPU (a round trip of ~30 us on the
   2-core VM of benches/RESULTS.md) or on the other one (~85 us: a
   cross-CPU wake-up each way) by chance, so one rep could compare ours in
   one placement with raw in the other (2.8x). On one CPU the round trip is
   the CPU work of both ends plus the syscalls, which is also where a
   link's overhead shows most.

Throughput runs send 50,000 / 10,000 / 4,000 frames (1 / 100 / 1000
records each), 0.1-0.3 s a run: the 400,000 records they used to send at
1000 records per frame took about 7 ms, and the ratio swung from 63% to 160%.

Like with like: both senders put the same 5-byte `(channel, kind)` header
in front of the same body the same way (`FRAME.pack(...) + body`; raw used
to build it from three pieces, a little more work than ours), both
receivers check the kind of every frame and echo a PING or DONE at once
from the reading coroutine (no task), and both round-trip senders read the
echo in their own coroutine. What only ours does is ours to pay for: the
receiver strips the header and frames the echo again, and both ends account
credit (`consumed`) for every frame.

Targets (issue 6): our link >= 90% of raw aiohttp's records/s at 100 and
1000 records per frame; round trip within 10% of raw.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import time

import aiohttp
import uvloop
from aiohttp import web
from kernel.net._codec import HEADER, encode_batch
from kernel.net._links import FRAME, LinkServer, dial

from benches._report import machine, percentile, table

SECRET = "bench-secret"
CHANNEL = 0
DATA, DONE, PING = 1, 2, 3


def frames_for(batch_size: int, count: int) -> list[bytes]:
    batch = [(i, f"word{i % 1000}") for i in range(batch_size)]
    kind, body = encode_batch(batch)
    return [HEADER.pack(kind, 0) + body] * count


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- receivers (a process each) ---------------------------------------------------------


def receive_ours(port: int, ready) -> None:
    async def main():
        links = {}

        def on_frame_for(peer):
            def on_frame(channel, kind, body):
                link = links[peer]
                link.consumed(channel, link.size(body))
                if kind in (DONE, PING):
                    return link.send(channel, kind, body)  # awaited by the link, no task
                return None

            return on_frame

        server = LinkServer("127.0.0.1", port, SECRET, 0, {CHANNEL}, on_frame_for,
                            on_link=lambda link: links.__setitem__(link.peer, link))
        await server.start()
        ready.set()
        await asyncio.sleep(3600)

    uvloop.run(main())


def receive_raw(port: int, ready) -> None:
    async def handler(request):
        ws = web.WebSocketResponse(max_msg_size=64 << 20)
        await ws.prepare(request)
        async for message in ws:
            data = message.data
            if data[4] in (DONE, PING):
                await ws.send_bytes(data)
        return ws

    async def main():
        app = web.Application()
        app.router.add_get("/raw", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.sleep(3600)

    uvloop.run(main())


# -- senders (in a process each) ---------------------------------------------------------


async def _ours_endpoint(port, pull: bool):
    """Ours, as a consumer would use it: `pull` reads replies in the caller's
    coroutine (`async for`: no task in between; what a round trip wants);
    otherwise a reader task hands them over while the caller sends (what a
    sender wants: it must read credit back while it sends)."""
    replies: asyncio.Queue = asyncio.Queue()
    link, session = await dial(f"http://127.0.0.1:{port}", SECRET, 1, {CHANNEL},
                               lambda channel, kind, body: replies.put_nowait(bytes(body)))
    frames = aiter(link)
    reader = None if pull else asyncio.ensure_future(link.run())

    async def send(frame: bytes, kind: int) -> None:
        await link.send(CHANNEL, kind, frame)

    async def reply() -> bytes:
        if pull:
            _channel, _kind, body = await anext(frames)
        else:
            body = await replies.get()
        link.consumed(CHANNEL, link.size(body))
        return body

    async def close():
        await link.close()
        await session.close()
        if reader is not None:
            reader.cancel()

    return send, reply, close


async def _raw_endpoint(port, _pull: bool):
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(f"http://127.0.0.1:{port}/raw", max_msg_size=64 << 20)

    async def send(frame: bytes, kind: int) -> None:
        await ws.send_bytes(FRAME.pack(CHANNEL, kind) + frame)  # the header as Link.send makes it

    async def reply() -> bytes:
        return (await ws.receive()).data

    async def close():
        await ws.close()
        await session.close()

    return send, reply, close


ENDPOINTS = {"ours": _ours_endpoint, "raw": _raw_endpoint}


def send_batches(which: str, port: int, batch_size: int, count: int, out) -> None:
    async def main():
        send, reply, close = await ENDPOINTS[which](port, False)
        frames = frames_for(batch_size, count)
        await send(frames[0], DATA)  # warm
        start = time.perf_counter()
        for frame in frames:
            await send(frame, DATA)
        await send(b"done", DONE)
        await reply()
        elapsed = time.perf_counter() - start
        await close()
        out.send(batch_size * count / elapsed)

    uvloop.run(main())


BLOCK = 100  # round trips in a row on one link before switching to the other


def round_trips(ports: dict, rounds: int, out) -> None:
    """Both links from one process, alternating blocks of BLOCK round trips
    (which goes first alternates too), so a burst of load from elsewhere on
    the machine falls on both alike."""
    async def main():
        endpoints = {which: await ENDPOINTS[which](port, True) for which, port in ports.items()}
        message = b"0123456789abcdef"
        samples = {which: [] for which in endpoints}

        async def block(which: str, n: int, keep: bool) -> None:
            send, reply, _close = endpoints[which]
            kept = samples[which]
            for _ in range(n):
                start = time.perf_counter_ns()
                await send(message, PING)
                await reply()
                if keep:
                    kept.append((time.perf_counter_ns() - start) / 1000)

        for which in endpoints:
            await block(which, 200, False)  # warm
        order = list(endpoints)
        for i in range(max(1, rounds // BLOCK)):
            for which in order if i % 2 == 0 else order[::-1]:
                await block(which, BLOCK, True)
        for _send, _reply, close in endpoints.values():
            await close()
        out.send(samples)

    uvloop.run(main())


def _pinned(cpu: int | None, target, *args) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    target(*args)


def measure_round_trips(rounds: int) -> dict:
    """A receiver of each kind, then one sender process with both links, all
    three on one CPU (where the system can pin them)."""
    context = multiprocessing.get_context("fork")
    cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else None
    receivers, ports = [], {}
    try:
        for which, target in (("ours", receive_ours), ("raw", receive_raw)):
            ports[which] = free_port()
            ready = context.Event()
            receiver = context.Process(target=_pinned, args=(cpu, target, ports[which], ready),
                                       daemon=True)
            receiver.start()
            receivers.append(receiver)
            ready.wait(10)
        out_recv, out_send = context.Pipe(duplex=False)
        sender = context.Process(target=_pinned, args=(cpu, round_trips, ports, rounds, out_send),
                                 daemon=True)
        sender.start()
        result = out_recv.recv()
        sender.join(10)
        return result
    finally:
        for receiver in receivers:
            receiver.kill()
            receiver.join(5)


def measure(which: str, job, *args):
    context = multiprocessing.get_context("fork")
    port = free_port()
    ready = context.Event()
    receiver = context.Process(target=receive_ours if which == "ours" else receive_raw,
                               args=(port, ready), daemon=True)
    receiver.start()
    try:
        ready.wait(10)
        out_recv, out_send = context.Pipe(duplex=False)
        sender = context.Process(target=job, args=(which, port, *args, out_send), daemon=True)
        sender.start()
        result = out_recv.recv()
        sender.join(10)
        return result
    finally:
        receiver.kill()
        receiver.join(5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    args = parser.parse_args(argv)
    reps, scale, rounds = (1, 20, 500) if args.quick else (5, 1, 5_000)
    frames_per_run = {1: 50_000, 100: 10_000, 1000: 4_000}  # about 0.1-0.3 s a run
    print(machine())
    print()
    rows = []
    for batch_size in (1, 100, 1000):
        count = max(1, frames_per_run[batch_size] // scale)
        rates = {which: [] for which in ENDPOINTS}
        for _ in range(reps):
            for which in ENDPOINTS:  # interleaved
                rates[which].append(measure(which, send_batches, batch_size, count))
        ours, raw = statistics.median(rates["ours"]), statistics.median(rates["raw"])
        target = ">= 90% of raw" if batch_size >= 100 else ""
        verdict = ("PASS" if ours >= 0.9 * raw else "FAIL") if target else ""
        rows.append([batch_size, "ours: Link.send (credits, auth)", ours, f"{ours / raw:.0%}", target,
                     verdict])
        rows.append([batch_size, "raw aiohttp ws.send_bytes", raw, "100%", "", ""])
    print(table(f"1. throughput over loopback, records/s (median of {reps})",
                ["records/frame", "link", "records/s", "vs raw", "target", "result"], rows))
    print()
    trips = {which: [] for which in ENDPOINTS}
    for _ in range(reps):
        for which, samples in measure_round_trips(rounds).items():
            trips[which].append(samples)
    p50 = {w: statistics.median(percentile(s, 50) for s in trips[w]) for w in ENDPOINTS}
    p99 = {w: statistics.median(percentile(s, 99) for s in trips[w]) for w in ENDPOINTS}
    ok = p50["ours"] <= 1.1 * p50["raw"]
    print(table(f"2. round trip of a 16-byte frame, us ({rounds:,} each after 200 warm-up, in alternating "
                f"blocks of {BLOCK}; median of {reps})",
                ["link", "p50 us", "p99 us", "vs raw", "target", "result"],
                [["ours: Link", p50["ours"], p99["ours"], f"{p50['ours'] / p50['raw']:.2f}x",
                  "within 10% of raw", "PASS" if ok else "FAIL"],
                 ["raw aiohttp", p50["raw"], p99["raw"], "1.00x", "", ""]]))


if __name__ == "__main__":
    main()
