"""Found by a review of the metrics/dashboard server (a job's `dashboard=`
and the coordinator's --dashboard), both unauthenticated: a stranger that
reaches the port must not take the process's descriptors (open connections
are capped, idle ones closed), must not fill the run's output with
tracebacks (a request aiohttp cannot parse), and the page must not break on
event times beyond JavaScript's dates (timestamps in microseconds)."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import threading
import time

import pytest
from _chromium import UPDATES_AFTER, Chromium
from _metrics_helpers import dashboard_run, free_port, held_source, paced_numbers, scrape, wait_for_graph

from kernel import Dataflow
from kernel.metrics import _server

SNAPSHOT = {"kernel": 0, "steps": [["numbers", 1, 1, None, None, 1, False, 0.0]], "busy": {},
            "stalls": 0, "idle": 0.0}


def _descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _connect(port: int, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        client.setblocking(False)
        clients.append(client)
    return clients


def _closed_by_peer(client: socket.socket) -> bool:
    """Whether the server closed `client` (EOF or reset); False while it is open and silent."""
    try:
        return client.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def _wait_closed(clients: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The clients still open after `timeout` seconds (each closed by its peer is dropped)."""
    open_ = list(clients)
    deadline = time.monotonic() + timeout
    while open_ and time.monotonic() < deadline:
        readable, _, _ = select.select(open_, [], [], 0.1)
        open_ = [c for c in open_ if c not in readable or not _closed_by_peer(c)]
    return open_


def test_a_stranger_holding_connections_does_not_take_a_runs_descriptors(tmp_path, monkeypatch):
    """200 connections that send nothing, to a one-kernel run's dashboard
    (its server on the run's loop, in this process): the process holds the
    cap's worth at most (it held all 200: with 3000 and a soft limit of
    1024 a run failed, 'Too many open files'); the idle ones are closed
    after the idle timeout; a scrape is answered afterwards."""
    monkeypatch.setattr(_server, "IDLE_TIMEOUT", 2.0)
    gate = tmp_path / "release"
    flow = Dataflow("held")
    flow.from_async_iterable(held_source(list(range(10)), gate), name="numbers").collect()
    port = free_port()
    thread, errors = dashboard_run(flow, port)
    clients: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 20
        while True:  # up, and its one connection gone
            try:
                scrape(port)
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard never answered"
                time.sleep(0.02)
        time.sleep(0.2)
        before = _descriptors()
        clients = _connect(port, 200)
        deadline = time.monotonic() + 10
        while True:  # until the server has taken every one: kept (a descriptor of its own) or closed
            grown = _descriptors() - before - len(clients)  # the server's side of them
            refused = sum(map(_closed_by_peer, clients))
            if grown + refused >= len(clients) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert grown <= _server.MAX_CONNECTIONS + 4, f"the server holds {grown} descriptors more"
        still_open = _wait_closed(clients, 2.0 + 5.0)
        assert still_open == [], f"{len(still_open)} idle connections not closed"
        assert "streamkernel_records_out_total" in scrape(port)
    finally:
        for client in clients:
            client.close()
        gate.touch()
        thread.join()
    assert not errors, errors


def _serve(which: str, state=None):
    """A started server of kind `which` on a free port: (runner, port)."""
    if which == "metrics":
        sock = _server.listen(("127.0.0.1", 0))
        return _server.serve_on_loop(sock, state or (lambda: [SNAPSHOT])), sock.getsockname()[1]
    from kernel.system._dashboard import dashboard_socket, serve_dashboard

    sock = dashboard_socket("127.0.0.1", 0)
    return serve_dashboard(sock, lambda: {"executors": [], "jobs": [], "topics": []}), sock.getsockname()[1]


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_connections_past_the_cap_are_closed_and_the_server_still_stops(which):
    """Of 100 connections, those past MAX_CONNECTIONS are closed at once,
    the others kept; the runner's cleanup closes them all, and the port."""

    async def scenario():
        starting, port = _serve(which)
        runner = await starting
        clients = await asyncio.to_thread(_connect, port, 100)
        try:
            still_open = await asyncio.to_thread(_wait_closed, clients, 1.0)
            kept = len(still_open)
            started = time.monotonic()
            await runner.cleanup()
            cleanup = time.monotonic() - started
            left = await asyncio.to_thread(_wait_closed, still_open, 2.0)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return kept, cleanup, left
        finally:
            for client in clients:
                client.close()

    kept, cleanup, left = asyncio.run(scenario())
    assert kept == _server.MAX_CONNECTIONS
    assert cleanup < 1.0 and left == []


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_an_event_stream_outlives_the_idle_timeout(which, monkeypatch):
    """The idle timeout closes a connection with no request, not a page's
    live stream: events keep coming past several idle timeouts, while an
    idle connection opened beside it is closed."""
    from kernel.metrics import _app
    from kernel.system import _dashboard

    monkeypatch.setattr(_server, "IDLE_TIMEOUT", 0.1)
    monkeypatch.setattr(_app, "UPDATE_INTERVAL", 0.02)
    monkeypatch.setattr(_dashboard, "UPDATE_INTERVAL", 0.02)

    async def scenario():
        starting, port = _serve(which)
        runner = await starting
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            (idle,) = await asyncio.to_thread(_connect, port, 1)
            writer.write(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
            started = time.monotonic()
            late_events = 0
            while time.monotonic() - started < 0.5:  # five idle timeouts
                chunk = await asyncio.wait_for(reader.read(1 << 20), 1.0)
                assert chunk, "the event stream was closed"
                if time.monotonic() - started > 0.35:
                    late_events += chunk.count(b"data: ")
            idle_closed = await asyncio.to_thread(_wait_closed, [idle], 0.1) == []
            writer.close()
            idle.close()
            return late_events, idle_closed
        finally:
            await runner.cleanup()

    late_events, idle_closed = asyncio.run(scenario())
    assert late_events > 0 and idle_closed


def _answer(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(request)
        return client.recv(65536)


@pytest.mark.parametrize("which", ["metrics", "system"])
def test_a_malformed_request_logs_no_traceback_and_a_handlers_error_still_does(which, caplog):
    """A header too long and a bad header line are answered 400 without a
    word in the log (aiohttp logged each at ERROR with its traceback: anyone
    who reaches the port could fill the run's output); a handler that fails
    is still logged with its traceback."""
    failing = threading.Event()

    def collect():
        if failing.is_set():
            raise RuntimeError("collect failed")
        return [SNAPSHOT]

    async def scenario():
        starting, port = _serve(which, collect)
        runner = await starting
        try:
            too_long = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
            bad_line = b"GET /metrics HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"
            answers = [await asyncio.to_thread(_answer, port, r) for r in (too_long, bad_line)]
            logged = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
            failed = None
            if which == "metrics":
                failing.set()
                failed = await asyncio.to_thread(_answer, port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            return answers, logged, failed
        finally:
            await runner.cleanup()

    caplog.set_level(logging.DEBUG)
    answers, logged, failed = asyncio.run(scenario())
    assert all(a.split(b"\r\n")[0].endswith(b" 400 Bad Request") for a in answers), answers
    assert logged == [], [(r.levelname, r.getMessage()) for r in logged]
    if failed is not None:
        assert failed.split(b"\r\n")[0].endswith(b" 500 Internal Server Error"), failed
        (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert error.exc_info and isinstance(error.exc_info[1], RuntimeError)




_STEP_ROWS = """Array.from(document.querySelectorAll('#steps tbody tr')).map(
  (row) => Array.from(row.children).map((td) => td.textContent))"""


async def test_the_page_shows_event_times_in_microseconds(tmp_path, monkeypatch):
    """Event times of ~1.7e15 (microseconds since 1970, beyond JavaScript's
    dates at 8.64e12 s): every step's counts and watermark are shown.
    new Date(w * 1000).toISOString() threw a RangeError at the source's
    watermark, and every step after it showed '-'."""
    from kernel.metrics import _app

    monkeypatch.setattr(_app, "UPDATE_INTERVAL", 0.1)  # (the page's second state in ~0.1 s, not ~1 s)
    gate = tmp_path / "release"

    numbers = paced_numbers(gate, 50)
    flow = Dataflow("microseconds")
    (flow.from_async_iterable(numbers, timestamp=lambda n: 1.7e15 + n * 1000, max_delay=0, name="numbers")
         .map(lambda n: n * 2, name="double")
         .collect())
    port = free_port()
    thread, errors = dashboard_run(flow, port)
    try:
        await asyncio.to_thread(wait_for_graph, port)
        async with Chromium() as page:
            first = await page.open_dashboard(f"http://127.0.0.1:{port}/")
            await page.evaluate(UPDATES_AFTER % (first + 1))
            rows = await page.evaluate(_STEP_ROWS)
            page_errors = await page.evaluate("window.pageErrors")
    finally:
        gate.touch()
        await asyncio.to_thread(thread.join)
    assert not errors, errors
    by_step = {row[0]: row for row in rows}
    assert set(by_step) == {"numbers (step 0)", "double (step 1)", "collect (step 2)"}, rows
    for step in ("double (step 1)", "collect (step 2)"):
        assert int(by_step[step][4].replace(",", "")) > 0, rows  # its input count
    for row in rows:  # its watermark: the number it is (1,700,000,000,123,000), not '-'
        assert float(row[6].replace(",", "")) >= 1.7e15, rows
    assert page_errors == [], page_errors  # (a RangeError at each update)
