"""A review of `Stream.broadcast()` (session 39): its edge crosses kernels
(every record to every kernel), so `/api/graph` says so and the dashboard
draws it as it draws an exchange by key, a dashed orange arrow, marked
`to every kernel`. It was described as `"exchange": false` and drawn as a
plain arrow inside a kernel."""

from __future__ import annotations

import asyncio

from _chromium import Chromium
from _metrics_helpers import dashboard_run, free_port, paced_numbers, wait_for_graph

from kernel import Dataflow


def _flow(gate):
    flow = Dataflow("broadcast on the dashboard")
    (flow.from_async_iterable(paced_numbers(gate), name="numbers")
         .broadcast(name="everywhere")
         .key_by(lambda n: n % 7, name="by7")
         .count(name="count")
         .collect())
    return flow


def test_the_graph_says_which_edge_is_a_broadcast(tmp_path):
    edges = [(s["name"], e["exchange"], e["broadcast"])
             for s in _flow(tmp_path / "unused").graph.describe()["steps"] for e in s["inputs"]]
    assert edges == [("everywhere", False, True), ("by7", False, False), ("count", True, False),
                     ("collect", False, False)]


async def test_the_page_draws_a_broadcast_as_an_edge_between_kernels(tmp_path):
    gate = tmp_path / "release"
    port = free_port()
    thread, errors = dashboard_run(_flow(gate), port, 1)  # (the graph drawn is the flow's, any kernels)
    try:
        await asyncio.to_thread(wait_for_graph, port)
        async with Chromium() as page:
            await page.open_dashboard(f"http://127.0.0.1:{port}/")
            crossing = await page.evaluate("document.querySelectorAll('#graph path.edge.exchange').length")
            marks = await page.evaluate("Array.from(document.querySelectorAll('#graph text.exchange-mark'))"
                                        ".map((t) => t.textContent)")
            page_errors = await page.evaluate("window.pageErrors")
    finally:
        gate.touch()
        await asyncio.to_thread(thread.join)
    assert not errors, errors
    assert page_errors == [], page_errors
    assert crossing == 2
    assert sorted(marks) == ["\u21c4 by key", "\u21c9 to every kernel"]
