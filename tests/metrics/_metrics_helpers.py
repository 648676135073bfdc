"""Shared by the metrics tests: a flow held open until the test has looked
at its metrics (its source yields everything, then waits for a file), and
scraping /metrics into {(family, labels): value}, a run with a dashboard on
a thread of the test, and its graph once described; a page's event stream
over a slow link, and a stranger's streams opened meanwhile."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import urllib.request
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def held_source(records: list, gate: Path):
    """An async generator function: yields `records`, then waits until
    `gate` exists (so the run stays up while the test scrapes it)."""

    async def numbers():
        for record in records:
            yield record
        while not gate.exists():
            await asyncio.sleep(0.005)

    return numbers


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """/metrics text, through prometheus_client's own parser."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def per_step(samples: dict, name: str) -> dict[str, float]:
    """A family's values summed over kernels, by step name without its '(step N)'."""
    out: dict[str, float] = {}
    for (family, labels), value in samples.items():
        if family == name:
            step = re.sub(r" \(step \d+\)", "", dict(labels)["step"])
            out[step] = out.get(step, 0) + value
    return out


def scrape_until(port: int, condition, timeout: float = 20.0) -> dict:
    """Scrape until `condition(samples)` holds; the last samples either way
    (the caller asserts on them, so a miss shows what was there)."""
    deadline = time.monotonic() + timeout
    samples: dict = {}
    while time.monotonic() < deadline:
        try:
            samples = parse(scrape(port))
        except OSError:  # not listening yet
            samples = {}
        if samples and condition(samples):
            break
        time.sleep(0.02)
    return samples


def paced_numbers(gate: Path, per_tick: int = 100):
    """An async generator function: numbers at a steady pace (so counts keep
    moving), `per_tick` every 10 ms, until `gate` exists."""

    async def numbers():
        n = 0
        while not gate.exists():
            for _ in range(per_tick):
                yield n
                n += 1
            await asyncio.sleep(0.01)

    return numbers


def dashboard_run(flow, port: int, cores: int = 1) -> tuple[threading.Thread, list]:
    """`run(flow, cores=cores, dashboard=...)` on a thread of its own, started:
    (the thread, the list its exception goes into)."""
    from kernel import run

    errors: list = []

    def body():
        try:
            run(flow, cores=cores, dashboard=f"127.0.0.1:{port}")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    return thread, errors


def wait_for_graph(port: int, timeout: float = 20.0) -> dict:
    """/api/graph once the server is up and a kernel has described it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/graph", timeout=5) as response:
                if response.status == 200:
                    return json.loads(response.read())
        except OSError:  # not up yet, or 503 (urllib's HTTPError) until described
            pass
        time.sleep(0.02)
    raise AssertionError(f"no graph at :{port}/api/graph in {timeout} s")


SLOW_PAGE_TAKEN = 4096  # bytes the page takes every 10 ms: ~400 kB/s, a ~100 kB state in ~5 intervals


def slow_page_settings(monkeypatch, interval: float) -> None:
    """The slow-page tests' servers: the metrics' and the system dashboard's
    UPDATE_INTERVAL `interval`, MAX_EVENT_STREAMS 4."""
    from kernel.metrics import _app, _server
    from kernel.system import _dashboard

    monkeypatch.setattr(_app, "UPDATE_INTERVAL", interval)
    monkeypatch.setattr(_dashboard, "UPDATE_INTERVAL", interval)
    monkeypatch.setattr(_server, "MAX_EVENT_STREAMS", 4)


async def a_slow_page(port: int):
    """A page's event stream over a slow link (a small receive buffer, and
    SLOW_PAGE_TAKEN bytes read every 10 ms): (its reading task, a list of the bytes read)."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_PAGE_TAKEN)
    client.connect(("127.0.0.1", port))
    client.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=client, limit=SLOW_PAGE_TAKEN)
    writer.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
    read = [0]

    async def reading() -> None:
        try:
            while chunk := await reader.read(SLOW_PAGE_TAKEN):
                read[0] += len(chunk)
                await asyncio.sleep(0.01)
        finally:
            writer.close()

    return asyncio.create_task(reading()), read


@asynccontextmanager
async def a_slow_page_served(serving):
    """The server `serving` ((its awaitable runner, its port)) started, and
    a slow page's stream of it (`a_slow_page`): yields (the port, the
    page's reading task, the list of the bytes it read, a list for the
    sockets the test opens); after, the page cancelled, those sockets
    closed, the server cleaned up."""
    starting, port = serving
    runner = await starting
    held: list[socket.socket] = []
    page, read = await a_slow_page(port)
    try:
        yield port, page, read, held
    finally:
        page.cancel()
        for client in held:
            client.close()
        await runner.cleanup()


async def strangers_streams(port: int, interval: float, held: list):
    """A stranger's streams, never read, one an interval from 3 *
    MAX_EVENT_STREAMS addresses, each added to `held`: yields each's index
    once it is open and an interval has passed."""
    from test_session39_event_streams import _streams

    from kernel.metrics import _server

    for i in range(3 * _server.MAX_EVENT_STREAMS):
        held += await asyncio.to_thread(_streams, port, 1, f"127.0.0.{2 + i}")
        await asyncio.sleep(interval)
        yield i
