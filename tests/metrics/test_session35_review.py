"""Review of the dashboard's address and pages (each test here failed
before its fix; see the commit messages): the error a taken port raises
is the public name the README gives it; an IPv6 address is written in
brackets; the address a run's dashboard listens on is said, port 0's
too, and the coordinator's; the HELP of the backpressured seconds says
what the README says; both pages work behind a reverse proxy under a path
prefix; a watermark's lag and date are shown for event times in seconds
only."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import aiohttp
import pytest
from _chromium import UPDATES_AFTER, Chromium
from _metrics_helpers import dashboard_run, free_port, held_source, paced_numbers, per_step, scrape_until
from aiohttp import web

import kernel.metrics
from kernel import Dataflow, run
from kernel.metrics import _app, render
from tests.kernel._procs import without_stall_reports

ROOT = Path(__file__).resolve().parents[2]


def _flow() -> Dataflow:
    flow = Dataflow("address")
    flow.from_iterable(range(3)).collect()
    return flow


# -- the error's name ----------------------------------------------------------------------------


def test_a_taken_port_raises_the_documented_public_error():
    """The README and run()'s docstring name `kernel.metrics.MetricsServerError`;
    only `kernel.metrics._server` had it (AttributeError)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(kernel.metrics.MetricsServerError) as raised:
            run(_flow(), dashboard=f"127.0.0.1:{port}")
    assert str(raised.value) == f"dashboard 127.0.0.1:{port}: cannot listen there: Address already in use"


# -- an IPv6 address -----------------------------------------------------------------------------


@pytest.mark.parametrize("cores", [1, 2])
def test_a_taken_ipv6_port_is_said_in_brackets(cores):
    """`dashboard="[::1]:PORT"` with the port taken: the error said
    `dashboard ::1:PORT`, an address that reads as host `::1:PORT` with no port."""
    with socket.socket(socket.AF_INET6) as taken:
        taken.bind(("::1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(kernel.metrics.MetricsServerError) as raised:
            run(_flow(), cores=cores, dashboard=f"[::1]:{port}")
    assert str(raised.value) == f"dashboard [::1]:{port}: cannot listen there: Address already in use"


# -- where the dashboard is ----------------------------------------------------------------------


class _Said(logging.Handler):
    """The records of the logger `kernel.metrics.url`, as they come."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: queue.Queue = queue.Queue()
        self.logger = logging.getLogger("kernel.metrics.url")

    def emit(self, record: logging.LogRecord) -> None:
        self.records.put(record)

    def __enter__(self) -> _Said:
        self.level_was = self.logger.level
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *_exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_was)


def _graph(url: str, timeout: float = 20.0) -> dict:
    """`url`'s /api/graph, once a kernel has described it (503 until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}api/graph", timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or time.monotonic() > deadline:
                raise
        time.sleep(0.02)


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_run_on_port_0_says_the_url_it_serves(tmp_path, cores, host):
    """`dashboard="127.0.0.1:0"` listened on a port the system picked and
    said nothing of it. It is logged at INFO (`kernel.metrics.url`, the URL
    also the record's `url`), and that URL serves the run's own graph."""
    gate = tmp_path / "release"
    flow = Dataflow("anywhere")
    flow.from_async_iterable(held_source(list(range(10)), gate), name="numbers").collect()
    errors: list = []
    bracketed = f"[{host}]" if ":" in host else host

    def body():
        try:
            run(flow, cores=cores, dashboard=f"{bracketed}:0")
        except BaseException as exc:
            errors.append(exc)

    with _Said() as said:
        thread = threading.Thread(target=body)
        thread.start()
        try:
            record = said.records.get(timeout=20)
            graph = _graph(record.url)
        finally:
            gate.touch()
            thread.join()
    assert not errors, errors
    port = re.fullmatch(rf"http://{re.escape(bracketed)}:(\d+)/", record.url)
    assert port and int(port[1]) > 0, record.url
    assert (record.levelno, record.getMessage()) == (logging.INFO, f"dashboard on {record.url}")
    assert said.records.empty()  # (said once)
    assert graph["name"] == "anywhere"


CLI_PIPELINE = """
import asyncio, pathlib
from kernel import Dataflow

async def numbers():
    for n in range(500):
        yield n
    while not pathlib.Path({gate!r}).exists():
        await asyncio.sleep(0.005)

flow = Dataflow("cli")
flow.from_async_iterable(numbers, name="numbers").map(str, name="text").collect()
"""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_command_prints_the_url_of_port_0(tmp_path, log_format):
    """`python -m kernel.run pipeline.py --dashboard 127.0.0.1:0` printed
    nothing: the port was the system's to know. It prints `dashboard on
    URL` on stderr (as a JSON line with --log-format json), and the run's
    metrics are at that URL."""
    gate = tmp_path / "release"
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(textwrap.dedent(CLI_PIPELINE.format(gate=str(gate))))
    command = [sys.executable, "-m", "kernel.run", str(pipeline), "--cores", "2",
               "--dashboard", "127.0.0.1:0", "--log-format", log_format]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=30)
        said = json.loads(first) if log_format == "json" else {"message": first.rstrip("\n")}
        url = said["message"].removeprefix("dashboard on ")
        name = "streamkernel_records_in_total"
        port = int(re.fullmatch(r"http://127\.0\.0\.1:(\d+)/", url)[1])
        samples = scrape_until(port, lambda s: per_step(s, name).get("text") == 500)
    finally:
        gate.touch()
        process.wait(timeout=30)
        reader.join(timeout=30)
    rest = []
    while not lines.empty():
        rest.append(lines.get())
    assert process.returncode == 0, (first, rest)
    assert rest == []  # (nothing else said)
    assert per_step(samples, "streamkernel_records_in_total")["text"] == 500
    if log_format == "json":
        assert {k: said[k] for k in ("level", "message", "logger", "job")} == {
            "level": "INFO", "message": f"dashboard on {url}", "logger": "kernel.metrics.url",
            "job": "pipeline.py:flow"}
    else:
        assert first == f"dashboard on {url}\n"


def test_the_command_leaves_a_given_port_unsaid_where_stderr_is_no_terminal(tmp_path):
    """An executor runs each job with `--dashboard HOST:PORT`, a port it
    picked and shows on the system's page, its stderr the job's log: the
    URL line ended every job's log (after its own output). Said for port 0
    and on a terminal only; a given port into a file is the job's output."""
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text("from kernel import Dataflow\nflow = Dataflow('quiet')\n"
                        "flow.from_iterable(range(3)).print()\n")
    command = [sys.executable, "-m", "kernel.run", str(pipeline), "--dashboard", f"127.0.0.1:{free_port()}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    # (a loaded machine may preempt an activation past the stall threshold: its report is due)
    assert (done.returncode, done.stdout, without_stall_reports(done.stderr)) == (0, "0\n1\n2\n", ""), \
        done.stderr


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_the_coordinator_says_the_url_of_its_dashboard_on_port_0(tmp_path, host):
    """`coordinator --dashboard 127.0.0.1:0` logged `coordinator dashboard
    on http://127.0.0.1:0/`, the port asked for, not the one it took (and
    `::1:0` for IPv6); it says the URL its page is served at. Its own
    address as well: `coordinator listening on ::1:PORT` had no brackets."""
    from kernel.system._coordinator import serve

    records: queue.Queue = queue.Queue()
    handler = logging.Handler(logging.INFO)
    handler.emit = records.put
    logger = logging.getLogger("kernel.system")
    level_was = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    coordinator = asyncio.ensure_future(serve(host, 0, b"coordinator-secret", tmp_path / "data",
                                              dashboard=(host, 0)))
    listening = []
    try:
        deadline = time.monotonic() + 20
        said = None
        while said is None and time.monotonic() < deadline and not coordinator.done():
            try:
                record = records.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.01)
                continue
            if record.getMessage().startswith("coordinator listening on "):
                listening.append(record.getMessage())
            if record.getMessage().startswith("coordinator dashboard on "):
                said = record.getMessage()
        assert said is not None, coordinator
        url = said.removeprefix("coordinator dashboard on ")
        async with aiohttp.ClientSession() as session, session.get(f"{url}api/system") as response:
            system = await response.json()
    finally:
        coordinator.cancel()
        await asyncio.gather(coordinator, return_exceptions=True)
        logger.removeHandler(handler)
        logger.setLevel(level_was)
    bracketed = f"[{host}]" if ":" in host else host
    port = re.fullmatch(rf"http://{re.escape(bracketed)}:(\d+)/", url)
    assert port and int(port[1]) > 0, url
    assert system["executors"] == [] and system["jobs"] == []
    pattern = rf"coordinator listening on {re.escape(bracketed)}:[1-9][0-9]* \(catalog .*\)"
    assert len(listening) == 1 and re.fullmatch(pattern, listening[0]), listening


# -- what the backpressured seconds count --------------------------------------------------------


def test_the_help_of_the_backpressured_seconds_says_what_the_readme_says():
    """The README's table (the contract, and what the runtime counts:
    `Runtime._backpressured`) says a full ring, an asynchronous sink's full
    buffer or a loop's full entry; the HELP said only "a channel to another
    kernel was full"."""
    snapshot = {"kernel": 0, "steps": [], "busy": {}, "stalls": 0, "idle": 0.0, "backpressured": 0.5}
    name = "streamkernel_backpressured_seconds_total"
    (help_line,) = [line for line in render([snapshot]).splitlines() if line.startswith(f"# HELP {name} ")]
    assert help_line == (f"# HELP {name} Seconds a kernel's sources waited on a full ring, an asynchronous "
                         "sink's full buffer or a loop's full entry (not the kernel's own pacing).")
    readme = (ROOT / "README.md").read_text().splitlines()
    (row,) = [line for line in readme if line.startswith(f"| `{name}` |")]
    causes = "a full ring, an asynchronous sink's full buffer or a loop's full entry"
    assert f"its sources waited on {causes} (several kernels only; the kernel spreading its own work " \
           "over ticks is not counted) |" in row
    assert causes in help_line


# -- behind a reverse proxy ----------------------------------------------------------------------

PREFIX = "/streamkernel/"


async def _proxy(upstream: int) -> tuple[web.AppRunner, int]:
    """A reverse proxy, as nginx's `location /streamkernel/ { proxy_pass
    http://127.0.0.1:PORT/; }`: `PREFIX` + path goes to the upstream's
    path, streamed (server-sent events pass as they come); any other path
    is 404, as the proxy's own would be. (runner, its port)"""
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    async def forward(request: web.Request) -> web.StreamResponse:
        async with session.get(f"http://127.0.0.1:{upstream}/{request.match_info['tail']}") as answer:
            response = web.StreamResponse(status=answer.status,
                                          headers={"Content-Type": answer.headers["Content-Type"]})
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            return response

    async def close_session(_app) -> None:
        await session.close()

    app = web.Application()
    app.router.add_get(PREFIX + "{tail:.*}", forward)
    app.on_cleanup.append(close_session)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


# the system page's first state shown (`show`): its executor's row
_EXECUTOR_ROW = """new Promise((done, fail) => {
  const start = Date.now();
  (function check() {
    const row = document.querySelector('#executors tbody tr');
    if (row) return done(Array.from(row.children).map((td) => td.textContent));
    if (Date.now() - start > 10000) return fail(new Error("no state in 10 s: " + document.body.innerText));
    setTimeout(check, 20);
  })();
})"""


async def test_the_system_page_works_under_a_path_prefix():
    """The coordinator's page behind a reverse proxy at /streamkernel/:
    it listened to /api/events, the proxy's root (404), and never showed
    a state ("reconnecting...")."""
    from kernel.system._dashboard import dashboard_socket, serve_dashboard

    system = {"executors": [{"id": "e1", "host": "node-a", "cores": 4, "free": 3, "state": "up"}],
              "jobs": [], "topics": []}
    sock = dashboard_socket("127.0.0.1", 0)
    server = await serve_dashboard(sock, lambda: system)
    proxy, port = await _proxy(sock.getsockname()[1])
    try:
        async with Chromium() as page:
            await page.call("Page.navigate", url=f"http://127.0.0.1:{port}{PREFIX}")
            row = await page.evaluate(_EXECUTOR_ROW)
    finally:
        await proxy.cleanup()
        await server.cleanup()
    assert row == ["e1", "node-a", "4", "3", "up"]


async def test_a_jobs_page_works_under_a_path_prefix(tmp_path):
    """A run's own page behind the same proxy: its script, style, graph
    and live states all come through the prefix (relative URLs: a guard,
    it failed with the script's "/api/events")."""
    gate = tmp_path / "release"
    flow = Dataflow("proxied")
    flow.from_async_iterable(paced_numbers(gate), name="numbers").map(str, name="text").collect()
    upstream = free_port()
    thread, errors = dashboard_run(flow, upstream)
    proxy, port = await _proxy(upstream)
    try:
        async with Chromium() as page:
            updates = await page.open_dashboard(f"http://127.0.0.1:{port}{PREFIX}")
            names = await page.evaluate("Array.from(document.querySelectorAll('#steps tbody tr'))"
                                        ".map((row) => row.children[0].textContent)")
            header = await page.evaluate("getComputedStyle(document.querySelector('header')).backgroundColor")
            page_errors = await page.evaluate("window.pageErrors")
    finally:
        gate.touch()
        await proxy.cleanup()
        await asyncio.to_thread(thread.join)
    assert not errors, errors
    assert updates >= 1 and page_errors == [], page_errors
    assert names == ["numbers (step 0)", "text (step 1)", "collect (step 2)"]
    assert header == "rgb(31, 41, 55)"  # dashboard.css's #1f2937: the style came through too


# -- the watermark's lag -------------------------------------------------------------------------

# each step's row of the table, and the watermark line of its box
_LAGS = """Array.from(document.querySelectorAll('#steps tbody tr')).map((row) => [
  row.children[0].textContent, row.children[7].textContent,
  document.querySelector(`#graph g.box[data-step="${row.dataset.step}"] text:nth-of-type(3)`).textContent,
  row.children[6].textContent])"""
_DATE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"  # (a watermark shown as a UTC date)


@pytest.mark.parametrize("unit", ["seconds", "milliseconds", "microseconds"])
async def test_a_watermarks_lag_and_date_are_shown_for_seconds_only(tmp_path, unit, monkeypatch):
    """Event times 5 s behind the wall clock have a lag of 5 s and more,
    and their watermark is a date. In milliseconds or microseconds
    (~1.7e12, ~1.7e15: ahead of the wall clock's ~1.7e9) the lag was
    "0.0 ms", as if the run were up to date: it is "-", as for event times
    that are not on the wall clock at all; and a watermark in milliseconds
    was dated in the year 55,840: it is the number it is, as microseconds'."""
    monkeypatch.setattr(_app, "UPDATE_INTERVAL", 0.1)  # (the page's second state in ~0.1 s, not ~1 s)
    gate = tmp_path / "release"
    scale = {"seconds": 1, "milliseconds": 1e3, "microseconds": 1e6}[unit]
    flow = Dataflow("lag")
    (flow.from_async_iterable(paced_numbers(gate, 50), timestamp=lambda _n: (time.time() - 5) * scale,
                              max_delay=0, name="numbers")
         .map(lambda n: n * 2, name="double")
         .collect())
    port = free_port()
    thread, errors = dashboard_run(flow, port)
    try:
        async with Chromium() as page:
            first = await page.open_dashboard(f"http://127.0.0.1:{port}/")
            await page.evaluate(UPDATES_AFTER % (first + 1))
            rows = await page.evaluate(_LAGS)
            header = await page.evaluate("document.getElementById('watermark').textContent")
            page_errors = await page.evaluate("window.pageErrors")
    finally:
        gate.touch()
        await asyncio.to_thread(thread.join)
    assert not errors, errors
    assert page_errors == [], page_errors
    assert [row[0] for row in rows] == ["numbers (step 0)", "double (step 1)", "collect (step 2)"]
    for _step, column, box, watermark in [*rows, (None, None, None, header)]:
        if unit == "seconds":
            assert re.fullmatch(_DATE, watermark), (rows, header)
        else:  # the event time (5 s ago) as the number it is
            assert abs(float(watermark.replace(",", "")) / scale - time.time()) < 60, (rows, header)
        if column is None:  # (the header's watermark has no lag)
            continue
        if unit == "seconds":
            shown = re.fullmatch(r"(\d+\.\d) s", column)
            assert shown and 5.0 <= float(shown[1]) < 60, rows
        else:
            assert column == "-", rows
        assert box == f"wm lag {column}", rows
