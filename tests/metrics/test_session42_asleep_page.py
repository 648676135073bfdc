"""A dashboard tab the browser put in the background, with a real Chromium
(headless, over DevTools): hidden, the browser reads its stream on, and it
is not ended; frozen (Page.setWebLifecycleState, as Chromium freezes a tab
long in the background), the browser stops taking what it is sent, and its
stream was kept for the run's length (but for a newcomer past
MAX_EVENT_STREAMS), its connection's buffers full: a frozen tab woken after
40 s replayed ~100 stale states before the current one. It is ended now,
STOPPED_READING_FOR past its patience (woken, the tab's EventSource
reconnects: seen by hand, live again ~3 s after)."""

from __future__ import annotations

import asyncio
import socket
import time

from _chromium import Chromium

from kernel.metrics import _app, _server

INTERVAL = 0.05


def _snapshot(steps: int) -> dict:
    return {"kernel": 0, "steps": [[f"step {i}", 1, 1, None, None, i, False, 0.0] for i in range(steps)],
            "busy": {}, "stalls": 0, "idle": 0.0}


# what the page draws: 10 steps, a state of ~1 kB it takes at once; while it is frozen, a state of
# ~100 kB (the graph's steps and 990 more the page leaves out), so that its browser's buffers
# (~2-3 MB) fill within a couple of seconds
SMALL, BIG = _snapshot(10), _snapshot(1000)
GRAPH = {"name": "asleep", "steps": [
    {"id": i, "name": f"step {i}", "label": f"step {i}", "kind": "map", "source": i == 0, "combiner": False,
     "inputs": [] if i == 0 else [{"from": i - 1, "port": 0, "exchange": False, "broadcast": False}]}
    for i in range(10)]}


async def _until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not in {timeout} s: {what}"
        await asyncio.sleep(0.02)


async def test_a_hidden_tab_is_served_on_and_a_frozen_one_is_ended(monkeypatch):
    monkeypatch.setattr(_app, "UPDATE_INTERVAL", INTERVAL)
    monkeypatch.setattr(_app, "STOPPED_READING_FOR", 0.5)
    ends: list[asyncio.Event] = []
    opening = _app.EventStreams.open
    monkeypatch.setattr(_app.EventStreams, "open",
                        lambda self, *args: ends.append(opening(self, *args)) or ends[-1])
    sent = [SMALL]
    states = [0]  # states made (one an event)

    def collect() -> list[dict]:
        states[0] += 1
        return sent

    sock = _server.listen(("127.0.0.1", 0))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)  # (its connections' too)
    runner = await _server.serve_on_loop(sock, collect, lambda: GRAPH)
    try:
        async with Chromium() as page:
            await page.open_dashboard(f"http://127.0.0.1:{sock.getsockname()[1]}/")
            await page.call("Target.createTarget", url="about:blank")  # a new tab in front: ours hidden
            assert await page.evaluate("document.visibilityState") == "hidden"
            updates, made = await page.evaluate("window.dashboard.updates"), states[0]
            # hidden: 20 intervals (twice STOPPED_READING_FOR), read on and not ended
            await _until(lambda: states[0] >= made + 20, 5.0, "20 states sent to the hidden tab")
            assert await page.evaluate("window.dashboard.updates") >= updates + 15
            assert len(ends) == 1 and not ends[0].is_set()

            await page.call("Page.setWebLifecycleState", state="frozen")
            sent[0] = BIG
            await _until(ends[0].is_set, 8.0, "the frozen tab's stream ended")
            assert len(ends) == 1  # (no newcomer ended it)
            assert await page.evaluate("window.pageErrors") == []
    finally:
        await runner.cleanup()
