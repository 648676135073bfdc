"""The dashboard at `/` of `dashboard=`: a real headless Chromium loads the
page of a running job on two kernels and sees its steps and moving counts
(and saves a screenshot); the graph it draws is the flow's own; the state
it is sent is the kernels' snapshots summed, checked against plain sums;
its live stream ends with the run."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from _chromium import UPDATES_AFTER, Chromium
from _metrics_helpers import dashboard_run, free_port, held_source, paced_numbers, wait_for_graph
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, run
from kernel.metrics._app import PAGES, STATIC
from kernel.metrics._dashboard import dashboard_state

ROOT = Path(__file__).resolve().parents[2]


def _paced_flow(gate: Path):
    """Numbers at a steady pace (so counts keep moving) until `gate` exists."""
    numbers = paced_numbers(gate)
    flow = Dataflow("dashboard")
    (flow.from_async_iterable(numbers, name="numbers")
         .map(lambda n: n * 3, name="triple")
         .key_by(lambda n: n % 7, name="by7")
         .count(name="count")
         .collect())
    return flow


def _get(port: int, path: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read(), response.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def _running(flow, tmp_path: Path, cores: int):
    port = free_port()
    return (port, *dashboard_run(flow, port, cores))




_STEP_ROWS = """Array.from(document.querySelectorAll('#steps tbody tr')).map(
  (row) => Array.from(row.children).map((td) => td.textContent))"""


async def test_a_browser_sees_the_steps_and_moving_counts(tmp_path):
    gate = tmp_path / "release"
    flow = _paced_flow(gate)
    port, thread, errors = _running(flow, tmp_path, cores=2)
    try:
        await asyncio.to_thread(wait_for_graph, port)
        async with Chromium() as page:
            first = await page.open_dashboard(f"http://127.0.0.1:{port}/")
            rows_before = await page.evaluate(_STEP_ROWS)
            await page.evaluate(UPDATES_AFTER % first)
            rows_after = await page.evaluate(_STEP_ROWS)
            text = await page.evaluate("document.body.innerText")
            boxes = await page.evaluate("document.querySelectorAll('#graph g.box').length")
            exchanges = await page.evaluate("document.querySelectorAll('#graph path.edge.exchange').length")
            shot = await page.call("Page.captureScreenshot", format="png")
            page_errors = await page.evaluate("window.pageErrors")
    finally:
        gate.touch()
        await asyncio.to_thread(thread.join)
    assert not errors, errors
    assert page_errors == [], page_errors  # the script threw nothing, nothing failed to load
    for step in flow.graph.nodes:
        assert step.label in text, (step.label, text)
    assert boxes == len(flow.graph.nodes) and exchanges == 1
    # the source's "out" column (records emitted) moved between two updates
    out_before = {row[0]: row[5] for row in rows_before}
    out_after = {row[0]: row[5] for row in rows_after}
    source = "numbers (step 0)"

    def number(text: str) -> int:
        return int(text.replace(",", ""))

    assert number(out_after[source]) > number(out_before[source]) > 0, (rows_before, rows_after)
    png = base64.b64decode(shot["data"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    path = tmp_path / "dashboard.png"
    path.write_bytes(png)
    print(f"dashboard screenshot: {path}")


def test_the_page_draws_the_flows_own_graph(tmp_path):
    """/api/graph is `Graph.describe()` of the flow that runs (one kernel:
    the run's loop; the page, script and style are the package's files)."""
    gate = tmp_path / "release"
    flow = _paced_flow(gate)
    port, thread, errors = _running(flow, tmp_path, cores=1)
    try:
        graph = wait_for_graph(port)
        pages = {path: _get(port, path) for path in PAGES}
        status, state, _ = _get(port, "/api/state")
    finally:
        gate.touch()
        thread.join()
    assert not errors, errors
    assert graph == flow.graph.describe()
    assert [s["name"] for s in graph["steps"]] == ["numbers", "triple", "by7", "count", "collect"]
    assert [e["exchange"] for s in graph["steps"] for e in s["inputs"]] == [False, False, True, False]
    for path, (name, content_type) in PAGES.items():
        code, body, served_type = pages[path]
        assert (code, body, served_type) == (200, (STATIC / name).read_bytes(), content_type)
    assert status == 200 and {s["id"] for s in json.loads(state)["steps"]} == {0, 1, 2, 3, 4}


def test_the_live_stream_ends_with_the_run(tmp_path):
    """/api/events sends states while the job runs, then an `end` event
    with the final counts when it stops, and closes."""
    gate = tmp_path / "release"
    flow = _paced_flow(gate)
    port, thread, errors = _running(flow, tmp_path, cores=1)
    wait_for_graph(port)
    events = []
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/events", timeout=10) as stream:
        assert stream.headers["Content-Type"] == "text/event-stream"
        event = "message"
        for raw in stream:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: "):
                events.append((event, json.loads(line[len("data: "):])))
                event = "message"
                if len(events) == 2:
                    gate.touch()  # two states seen: let the run end
    thread.join()
    assert not errors, errors
    assert [e for e, _ in events[:2]] == ["message", "message"] and events[-1][0] == "end"
    final = {s["id"]: s for s in events[-1][1]["steps"]}
    assert final[0]["out"] == final[1]["in"] == final[1]["out"] == final[3]["in"] > 0
    assert final[4]["in"] == 7 and final[4]["watermark"] == "end"  # one count per key, at the end


_step = st.tuples(st.one_of(st.none(), st.integers(0, 10**9)), st.one_of(st.none(), st.integers(0, 10**9)),
                  st.one_of(st.none(), st.floats(0, 2e9), st.just(math.inf)),
                  st.one_of(st.none(), st.integers(0, 100)))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_step, min_size=3, max_size=3), min_size=1, max_size=4))
def test_state_is_the_snapshots_summed(kernels):
    """dashboard_state against a plain loop: per step, counts summed over
    kernels (None where no kernel has that count), the lowest watermark
    ("end" when it is +inf)."""
    snapshots = [
        {"kernel": k, "steps": [[f"s{i}", *step, i, False, 0.5] for i, step in enumerate(steps)],
         "busy": {"throughput": 1.0}, "idle": 0.5, "stalls": k}
        for k, steps in enumerate(kernels)
    ]
    state = dashboard_state(snapshots, 123.0)
    for i, got in enumerate(state["steps"]):
        for field, column in (("in", 0), ("out", 1), ("late", 3)):
            values = [steps[i][column] for steps in kernels if steps[i][column] is not None]
            assert got[field] == (sum(values) if values else None)
        marks = [steps[i][2] for steps in kernels if steps[i][2] is not None]
        expected = min(marks) if marks else None
        assert got["watermark"] == ("end" if expected == math.inf else expected)
        assert got["busy"] == 0.5 * len(kernels)
    assert [k["stalls"] for k in state["kernels"]] == list(range(len(kernels)))
    assert json.loads(json.dumps(state, allow_nan=False)) == state


def test_a_combiners_partial_half_counts_as_its_steps_input():
    snapshot = {"kernel": 0, "busy": {}, "idle": 0.0, "stalls": 0, "complete": 4,
                "epoch_log": [[3, 10.0, 0.002], [4, 11.0, 0.003]],
                "steps": [["count (step 1)", 5, 2, None, None, 1, False, 0.25],
                          ["count (step 1), partial before the exchange", 40, 5, None, None, 1, True, 0.5]]}
    other = {**snapshot, "kernel": 1, "complete": 3, "epoch_log": [[4, 11.5, 0.001]]}
    state = dashboard_state([snapshot, other], 0.0)
    assert state["steps"] == [
        {"id": 1, "in": 10, "out": 4, "watermark": None, "late": None, "partial_in": 80, "busy": 1.5}]
    # complete on every kernel: the lowest; each epoch as slow as its slowest kernel
    assert state["epochs"] == {"complete": 3, "timeline": [[3, 10.0, 0.002], [4, 11.5, 0.003]]}


def test_the_package_ships_the_page():
    """pyproject's package data takes every file of kernel/metrics/_static
    (a non-editable install has the page)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["kernel.metrics"]
    shipped = {p for pattern in patterns for p in (ROOT / "kernel" / "metrics").glob(pattern)}
    assert {STATIC / name for name, _ in PAGES.values()} <= shipped
    assert "kernel.metrics" in config["tool"]["setuptools"]["packages"]


def test_the_epoch_timeline_of_a_run_with_a_state_dir(tmp_path):
    """With a state_dir the state has the epochs each kernel snapshotted
    (in order, each with its time and a duration) and the last epoch
    complete on every kernel (committed: at most the last snapshotted)."""
    gate = tmp_path / "release"
    flow = _paced_flow(gate)
    port = free_port()
    errors: list = []

    def body():
        try:
            run(flow, cores=2, dashboard=f"127.0.0.1:{port}", state_dir=tmp_path / "state",
                epoch_interval=0.05)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=body)
    thread.start()
    try:
        wait_for_graph(port)
        deadline = time.monotonic() + 20
        state = {}
        while time.monotonic() < deadline:
            state = json.loads(_get(port, "/api/state")[1])["epochs"]
            if state["complete"] is not None and len(state["timeline"]) >= 3:
                break
            time.sleep(0.02)
    finally:
        gate.touch()
        thread.join()
    assert not errors, errors
    timeline = state["timeline"]
    assert len(timeline) >= 3, state
    epochs, times, seconds = zip(*timeline)
    assert list(epochs) == sorted(set(epochs)) and list(times) == sorted(times)
    assert all(0 < s < 10 for s in seconds)
    assert state["complete"] <= epochs[-1]


async def test_run_async_serves_the_dashboard_on_the_callers_loop(tmp_path):
    """run_async(dashboard=...) on the caller's loop: the same page and
    graph, and a live stream that ends with the run, with the loop's other
    work going on (this test's client runs on it)."""
    import aiohttp

    from kernel import run_async

    gate = tmp_path / "release"
    flow = _paced_flow(gate)
    port = free_port()
    job = asyncio.ensure_future(run_async(flow, dashboard=f"127.0.0.1:{port}"))
    events = []
    async with aiohttp.ClientSession() as session:
        for _ in range(500):
            try:
                async with session.get(f"http://127.0.0.1:{port}/api/graph") as response:
                    graph = await response.json()
                break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.01)
        async with session.get(f"http://127.0.0.1:{port}/") as response:
            page = await response.read()
        async with session.get(f"http://127.0.0.1:{port}/api/events") as response:
            async for line in response.content:
                if line.startswith(b"event: "):
                    events.append(line.strip().decode())
                elif line.startswith(b"data: "):
                    events.append("data")
                    if events.count("data") == 2:
                        gate.touch()
    await job
    assert graph == flow.graph.describe() and page == (STATIC / "index.html").read_bytes()
    assert events[:2] == ["data", "data"] and events[-2:] == ["event: end", "data"]


def test_a_steps_busy_time_is_its_own_handlers(tmp_path):
    """Each step's busy seconds are the time in its on_batch less the steps
    it called: a slow step chained after a fast one has the sleeps, the
    fast one (whose emit ran the slow one) not. (Two filters: a run with
    metrics fuses no two steps that may change the number of records,
    while a filter and a map would run as one handler, whose time is the
    first's.)"""
    gate = tmp_path / "release"
    records, pause = list(range(2000)), 0.003
    sleeps = sum(1 for n in records if n % 100 == 0)

    def slow(n):
        if n % 100 == 0:
            time.sleep(pause)
        return n

    flow = Dataflow("busy")
    (flow.from_async_iterable(held_source(records, gate), batch_size=100, name="numbers")
         .filter(lambda n: n >= 0, name="fast").filter(lambda n: slow(n) >= 0, name="slow").collect())
    port, thread, errors = _running(flow, tmp_path, cores=1)
    try:
        wait_for_graph(port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            steps = {s["id"]: s for s in json.loads(_get(port, "/api/state")[1])["steps"]}
            if steps[2]["in"] == len(records):
                break
            time.sleep(0.02)
    finally:
        gate.touch()
        thread.join()
    assert not errors, errors
    assert steps[2]["in"] == len(records)
    assert sleeps * pause <= steps[2]["busy"] < sleeps * pause + 0.5
    assert steps[1]["busy"] < sleeps * pause / 4 and steps[0]["busy"] is None
