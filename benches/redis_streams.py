"""Redis Streams: our source and sink beside redis-py's own loops.

    python -m benches.redis_streams            # 200,000 entries, median of 3
    python -m benches.redis_streams --quick    # smoke test

A fresh `redis-server` (tests/_redis_server.py: a free port, a temporary
directory, nothing persisted) holds the streams. Every entry is
`{"n": i, "pad": 16 bytes}`.

Reading: `flow.from_redis_stream(url, streams)` into an operator that only
counts, on 1 kernel (one stream) and 2 kernels (two streams, one each),
beside redis-py's asyncio client reading the same streams with `XREAD COUNT
1024` from the last id: one stream in this process, two in a forked process
each (as the kernels are).
Writing: `from_iterable(dicts).to_redis_stream(url, stream)` on 1 and 2
kernels, beside redis-py's asyncio pipelines of 1,024 `XADD`s, in 1 and 2
processes. Records/s is entries over the wall time of the whole run (ours
includes starting the kernels and connecting). redis-server is one more
process on the same cores: on a 2-core machine two kernels share them with
it.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time

import redis

from benches._report import machine, table
from benches._sinks import CountRecords
from kernel import Dataflow, run
from tests._redis_server import redis_server

BATCH = 1024
PAD = b"0123456789abcdef"


def fill(url: str, streams: list[str], n: int) -> None:
    client = redis.Redis.from_url(url)
    client.flushdb()
    per_stream = n // len(streams)
    for stream in streams:
        for start in range(0, per_stream, BATCH):
            pipe = client.pipeline(transaction=False)
            for i in range(start, min(start + BATCH, per_stream)):
                pipe.xadd(stream, {"n": i, "pad": PAD})
            pipe.execute()
    client.close()


# -- reading ------------------------------------------------------------------------------


def ours_read(url: str, streams: list[str], n: int) -> float:
    flow = Dataflow("redis read")
    flow.from_redis_stream(url, streams, batch_size=BATCH).apply(CountRecords, name="count")
    start = time.perf_counter()
    run(flow, cores=len(streams))
    return n / (time.perf_counter() - start)


async def _xread_loop(url: str, stream: str) -> int:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    last, count = "0", 0
    while True:
        reply = await client.xread({stream: last}, count=BATCH)
        if not reply:
            break
        entries = reply[0][1]
        count += len(entries)
        last = entries[-1][0]
    await client.aclose()
    return count


def _read_one(args) -> int:
    return asyncio.run(_xread_loop(*args))


def redis_py_read(url: str, streams: list[str], n: int) -> float:
    start = time.perf_counter()
    counts = _in_processes(_read_one, [(url, s) for s in streams])
    elapsed = time.perf_counter() - start
    assert sum(counts) == n, counts
    return n / elapsed


# -- writing ------------------------------------------------------------------------------


def ours_write(url: str, cores: int, n: int) -> float:
    redis.Redis.from_url(url).delete("out")
    records = [{"n": i, "pad": PAD} for i in range(n)]
    flow = Dataflow("redis write")
    flow.from_iterable(records, batch_size=BATCH).to_redis_stream(url, "out", batch_size=BATCH)
    start = time.perf_counter()
    run(flow, cores=cores)
    elapsed = time.perf_counter() - start
    assert redis.Redis.from_url(url).xlen("out") == n
    return n / elapsed


async def _xadd_loop(url: str, first: int, step: int, n: int) -> None:
    client = redis.asyncio.Redis.from_url(url)
    mine = range(first, n, step)
    for start in range(0, len(mine), BATCH):
        pipe = client.pipeline(transaction=False)
        for i in mine[start : start + BATCH]:
            pipe.xadd("out", {"n": i, "pad": PAD})
        await pipe.execute()
    await client.aclose()


def _write_share(args) -> None:
    asyncio.run(_xadd_loop(*args))


def redis_py_write(url: str, processes: int, n: int) -> float:
    redis.Redis.from_url(url).delete("out")
    start = time.perf_counter()
    _in_processes(_write_share, [(url, k, processes, n) for k in range(processes)])
    elapsed = time.perf_counter() - start
    assert redis.Redis.from_url(url).xlen("out") == n
    return n / elapsed


def _in_processes(fn, shares: list) -> list:
    """`fn(share)` for every share: in this process for one (as one kernel
    runs in the caller's), else in one forked process each."""
    if len(shares) == 1:
        return [fn(shares[0])]
    with multiprocessing.get_context("fork").Pool(len(shares)) as pool:
        return pool.map(fn, shares)


def median(runs: int, fn) -> float:
    values = sorted(fn() for _ in range(runs))
    return values[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    parser.add_argument("--entries", type=int, default=None)
    args = parser.parse_args()
    n = args.entries or (20_000 if args.quick else 200_000)
    runs = 1 if args.quick else 3
    rows_read, rows_write = [], []
    with redis_server() as url:
        for cores in (1, 2):
            streams = [f"in:{k}" for k in range(cores)]
            fill(url, streams, n)
            ours = median(runs, lambda: ours_read(url, streams, n))  # noqa: B023
            plain = median(runs, lambda: redis_py_read(url, streams, n))  # noqa: B023
            rows_read.append([f"{cores} ({cores} stream{'s' * (cores > 1)})", ours, plain, ours / plain])
            ours = median(runs, lambda: ours_write(url, cores, n))  # noqa: B023
            plain = median(runs, lambda: redis_py_write(url, cores, n))  # noqa: B023
            rows_write.append([str(cores), ours, plain, ours / plain])
    print(machine(), f"{n:,} entries, median of {runs}\n")
    print(table("Reading: records/s", ["kernels / processes", "from_redis_stream", "redis-py XREAD loop",
                                      "ours / redis-py"], rows_read))
    print()
    print(table("Writing: records/s", ["kernels / processes", "to_redis_stream",
                                      "redis-py pipelined XADD", "ours / redis-py"], rows_write))


if __name__ == "__main__":
    main()
