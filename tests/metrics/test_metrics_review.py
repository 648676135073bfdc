"""Review of /metrics and the dashboard: cases the other files do not cover
(each test here failed when written; see the commit message)."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.request

import pytest
from _chromium import Chromium
from _metrics_helpers import dashboard_run, free_port, held_source, per_step, scrape_until

from kernel import Dataflow
from kernel.metrics import parse_address
from kernel.scheduling._scheduler import Scheduler
from operators import Tumbling


def _last_state(port: int, gate) -> dict:
    """Listen to /api/events, release the run (`gate`), and give the state
    of the last event (`end`: the run's final counts)."""
    for _ in range(1000):
        try:
            response = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/events", timeout=20)
            break
        except OSError:
            threading.Event().wait(0.01)
    with response:
        gate.touch()
        events = response.read().decode().strip().split("\n\n")
    assert events[-1].startswith("event: end\n"), events[-1]
    return json.loads(events[-1].split("data: ", 1)[1])


def _halving_loop(records, gate):
    flow = Dataflow("loop")

    def halve(numbers):
        halved = numbers.filter(lambda n: n > 1, name="gt1").map(lambda n: n // 2, name="half")
        return halved, halved

    source = flow.from_async_iterable(held_source(records, gate), name="src")
    source.iterate(halve, max_in_flight=1000).collect()
    return flow


# -- counters -------------------------------------------------------------------------------


def test_a_loops_head_counts_the_records_it_is_handed(tmp_path):
    """A loop's head is handed the loop's input and every round's feedback,
    and emits them all: its streamkernel_records_in_total stayed 0 while
    its records_out_total was the whole count."""
    records = list(range(1, 50))
    handed, rounds = 0, records
    while rounds:
        handed += len(rounds)
        rounds = [n // 2 for n in rounds if n > 1]
    gate = tmp_path / "release"
    flow = _halving_loop(records, gate)
    port = free_port()
    thread, errors = dashboard_run(flow, port, cores=1)
    try:
        samples = scrape_until(port, lambda s: (
            per_step(s, "streamkernel_records_out_total").get("iterate(halve): input") == handed
            and per_step(s, "streamkernel_records_in_total").get("gt1") == handed))
    finally:
        gate.touch()
        thread.join()
    assert not errors, errors
    assert per_step(samples, "streamkernel_records_out_total")["iterate(halve): input"] == handed
    assert per_step(samples, "streamkernel_records_in_total")["iterate(halve): input"] == handed  # was 0


def test_idle_seconds_never_decrease_when_input_arrives():
    """streamkernel_idle_seconds_total is the scheduler's idle_time. While
    idle it counts the gap so far; once input readies an activation (a
    slice scheduled, not run yet) it dropped that gap until the slice ran:
    10 s, then 0 s, then 10 s again. A scrape (or a kernel's published
    snapshot) between the two saw the counter go back, which Prometheus
    reads as a counter reset."""

    class Loop:
        def __init__(self):
            self.callbacks = []

        def call_soon(self, fn, *args):
            self.callbacks.append((fn, args))

        def run_ready(self):
            while self.callbacks:
                fn, args = self.callbacks.pop(0)
                fn(*args)

    now = [100.0]

    class Step:
        name = "step"

        def activate(self):
            now[0] += 0.001

    loop = Loop()
    scheduler = Scheduler(loop, lambda: now[0], on_error=lambda activation, exc: None)
    scheduler.ready(Step())
    loop.run_ready()
    now[0] += 10.0  # nothing to do for 10 s
    idle = [scheduler.statistics().idle_time]
    scheduler.ready(Step())  # input arrives: a slice is scheduled
    idle.append(scheduler.statistics().idle_time)
    loop.run_ready()
    idle.append(scheduler.statistics().idle_time)
    assert idle == sorted(idle), idle  # was [10.0, 0.0, 10.0]


# -- the dashboard's state ----------------------------------------------------------------------


def test_the_dashboard_counts_late_events_its_windows_partial_half_found(tmp_path):
    """On two kernels a window's partial half (before the exchange) is where
    late events are found and dropped; the dashboard's state left its late
    count out (`if partial: continue`), so the step showed 0 late events
    while the window's own late_count was 3."""
    times = [0.1, 0.5, 1.2, 5.5, 0.3, 0.7, 2.2, 6.1, 1.5, 7.0]
    gate = tmp_path / "release"
    flow = Dataflow("late")
    windows = (flow.from_async_iterable(held_source(times, gate), timestamp=lambda t: t, max_delay=0.0,
                                        batch_size=1, name="events")
               .key_by(lambda t: "k").window(Tumbling(1.0)).count())
    windows.collect()
    window_step = next(node.id for node in flow.graph.nodes if node.kind[0] == "WindowAggregate")
    port = free_port()
    thread, errors = dashboard_run(flow, port, cores=2)
    try:
        state = _last_state(port, gate)
    finally:
        gate.touch()
        thread.join()
    assert not errors, errors
    late = {step["id"]: step["late"] for step in state["steps"]}
    assert windows.late_count.value > 0
    assert late[window_step] == windows.late_count.value  # was 0


async def test_the_page_draws_a_flow_with_a_loop(tmp_path):
    """A loop's head has an input from a step after it (the feedback): the
    page's layout (`layers`: one column right of its rightmost input, "nodes
    come in topological order") made that column NaN, and every step from
    the head on was placed at x=NaN (and the graph's width NaN): no box
    drawn for the loop or anything after it."""
    gate = tmp_path / "release"
    flow = _halving_loop(list(range(1, 50)), gate)
    port = free_port()
    thread, errors = dashboard_run(flow, port, cores=1)
    try:
        async with Chromium() as page:
            await page.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
            await page.evaluate("""new Promise((done, fail) => {
              const start = Date.now();
              (function check() {
                if (document.querySelectorAll('#graph g.box').length) return done(true);
                if (Date.now() - start > 10000) return fail(new Error("no graph drawn in 10 s"));
                setTimeout(check, 20);
              })();
            })""")
            xs = await page.evaluate("Array.from(document.querySelectorAll('#graph g.box rect.frame'))"
                                     ".map((r) => r.getAttribute('x'))")
            width = await page.evaluate("document.getElementById('graph').getAttribute('width')")
    finally:
        gate.touch()
        await asyncio.to_thread(thread.join)
    assert not errors, errors
    assert len(xs) == len(flow.graph.nodes)
    assert "NaN" not in xs and width != "NaN", (xs, width)


# -- the address ---------------------------------------------------------------------------------


def test_a_port_of_non_ascii_digits_is_refused_as_malformed():
    r"""The port is checked with str.isdigit, which is true of any Unicode
    digit: "127.0.0.1:\u0669\u0664\u0666\u0664" (Arabic-Indic) listened on 9464 and
    fullwidth "\uff18\uff10" on 80, and "127.0.0.1:\u00b2" failed with int()'s own message
    ("invalid literal for int() with base 10") instead of saying what a
    port must be."""
    for value in ("127.0.0.1:\u0669\u0664\u0666\u0664", "127.0.0.1:\uff18\uff10", "127.0.0.1:\u00b2"):
        with pytest.raises(ValueError, match="the port must be a number"):
            parse_address(value)
