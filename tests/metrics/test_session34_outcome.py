"""The dashboard says how a run ended: a run that raised said "ended", as
one that finished did (a review's find). The last state of `/api/events`
now carries `failed` (or `stopped`, for an interruption) with the error's
first line, and the page shows it."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from _chromium import Chromium
from _metrics_helpers import dashboard_run, free_port, held_source, wait_for_graph

from kernel import Dataflow, KernelProcessError, OperatorError
from kernel.metrics._dashboard import run_outcome

_FAILED = "OperatorError: operator 'check (step 1)': function 'test_session34_outcome.check' raised " \
          "ValueError: bad record -1"


def check(n):
    if n == -1:
        raise ValueError("bad record -1")
    return n


def _flow(gate, fail: bool) -> Dataflow:
    """Numbers until `gate` exists; then, if `fail`, a record the map refuses."""
    source = held_source(list(range(20)), gate)

    async def numbers():  # the failing record only once the test is listening: after the gate
        async for n in source():
            yield n
        if fail:
            yield -1

    flow = Dataflow("outcome")
    flow.from_async_iterable(numbers, name="numbers").map(check, name="check").collect()
    return flow


def _open_events(port: int, timeout: float = 20.0) -> socket.socket:
    """A connection reading `/api/events`, once the server answers."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = socket.create_connection(("127.0.0.1", port), timeout=10)
            break
        except OSError:
            assert time.monotonic() < deadline, "the dashboard never listened"
            time.sleep(0.02)
    client.sendall(b"GET /api/events HTTP/1.0\r\n\r\n")  # (1.0: the body as it is, not in chunks)
    return client


def _first_event(client: socket.socket) -> bytes:
    data = b""
    while b"data: " not in data or b"\n\n" not in data.partition(b"data: ")[2]:
        chunk = client.recv(65536)
        assert chunk, data
        data += chunk
    return data


def _last_state(client: socket.socket) -> dict:
    """The `end` event's state, read to the end of the stream."""
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    client.close()
    _, _, last = data.rpartition(b"event: end\ndata: ")
    assert last, data[-500:]
    return json.loads(last.split(b"\n\n")[0])


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("fail", [True, False], ids=["raised", "finished"])
def test_the_last_state_says_whether_the_run_failed(tmp_path, cores, fail):
    gate, port = tmp_path / "gate", free_port()
    thread, errors = dashboard_run(_flow(gate, fail), port, cores)
    try:
        client = _open_events(port)
        _first_event(client)  # the stream is live: the run has not ended
    finally:
        gate.touch()
    last = _last_state(client)
    thread.join(60)
    assert not thread.is_alive()
    if fail:
        (error,) = errors  # the run's own error, as the caller got it: its first line on the page
        assert type(error) is (OperatorError if cores == 1 else KernelProcessError), errors
        assert last["failed"] == f"{type(error).__name__}: {error}".splitlines()[0]
        assert last["failed"].endswith(_FAILED), last["failed"]
        assert "stopped" not in last
    else:
        assert errors == []
        assert "failed" not in last and "stopped" not in last, last


def test_an_interrupted_run_is_stopped_and_a_long_error_is_cut():
    assert run_outcome(None) == {}
    assert run_outcome(KeyboardInterrupt()) == {"stopped": "KeyboardInterrupt:"}
    long = run_outcome(ValueError("x" * 1000 + "\nsecond line"))["failed"]
    assert len(long) == 300 and long.startswith("ValueError: xxx") and long.endswith("...")
    assert run_outcome(ValueError("one\ntwo")) == {"failed": "ValueError: one"}


_STATUS_AFTER_END = """new Promise((done, fail) => {
  const start = Date.now();
  (function check() {
    const status = document.getElementById("status");
    if (window.dashboard && window.dashboard.ended) return done([status.textContent, status.className]);
    if (Date.now() - start > 20000) return fail(new Error("not ended in 20 s: " + status.textContent));
    setTimeout(check, 20);
  })();
})"""

_LIVE = """new Promise((done, fail) => {
  const start = Date.now();
  (function check() {
    const status = document.getElementById("status");  // (null while the page still loads)
    if (status && status.textContent === "live") return done(true);
    if (Date.now() - start > 10000) return fail(new Error("never live"));
    setTimeout(check, 20);
  })();
})"""


async def test_the_page_says_failed_with_the_error(tmp_path):
    gate, port = tmp_path / "gate", free_port()
    thread, errors = dashboard_run(_flow(gate, True), port, 2)
    try:
        await asyncio.to_thread(wait_for_graph, port)  # described: the page draws at once
        async with Chromium() as page:
            await page.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
            await page.evaluate(_LIVE)
            gate.touch()
            text, cls = await page.evaluate(_STATUS_AFTER_END, timeout=25)
    finally:
        gate.touch()
        await asyncio.to_thread(thread.join, 60)
    assert [type(e) for e in errors] == [KernelProcessError], errors
    assert cls == "failed"
    assert text.startswith("failed: KernelProcessError: kernel ") and text.endswith(_FAILED), text
