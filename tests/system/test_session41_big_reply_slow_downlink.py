"""Session 41: a command reading a big reply on a slow downlink is not cut
off by the coordinator's heartbeat.

The coordinator pings a client it has not heard from for a period
(KERNEL_COORDINATOR_HEARTBEAT), and that ping waits behind the reply it is
sending (in the sockets' buffers too); a big reply (a `logs` of several
executors, 1 MiB each; a `status` of many topics) that took longer than the
pong's half period to arrive had the coordinator close the connection of a
client that was reading it: a 3 MB reply at 2 MB/s with a 0.5 s heartbeat,
"No PONG received after 0.25 seconds; closing the connection", and the
command's next request ConnectionLost (`kernel logs` asks again after each
MiB). The client now pings every half period (`_keep_heard`).

A coordinator served in the test's loop; a topic registered with a 3 MB
record type makes its `status` 3 MB; the command's connection goes through
a proxy (threads) that forwards what the coordinator sends at RATE bytes a
second."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _system import SECRET, served_coordinator
from test_session40_heartbeat_big_request_review import SlowUplink

from kernel.system import Client

HEARTBEAT = 0.5  # seconds: a silent peer is pinged after 0.5 s, its pong awaited 0.25 s
RATE = 2_000_000  # bytes a second, the client's downlink
SIZE = 3_000_000  # the reply's: 1.5 s to come


class SlowDownlink(SlowUplink):
    """Forwards TCP connections to `target`; what the target sends goes on
    at `rate` bytes a second, what the client sends at once."""

    def _pump(self, source: socket.socket, sink: socket.socket, rate: float | None) -> None:
        SlowUplink._pump(self, source, sink, None if rate is not None else self.rate)


async def big_topic_published(address, size: int) -> None:
    """A topic "big" whose record type is `size` bytes (every reply that
    names it that big) published to the coordinator at `address`, on a
    connection of its own, closed after."""
    async with Client(address, SECRET.encode()) as direct:
        await direct.request("topic_publish", name="big", id="p1", job="app:x", partition=0,
                             address="http://127.0.0.1:1", record_type="x" * size)


def test_a_big_reply_on_a_slow_downlink_leaves_the_connection_open(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", str(HEARTBEAT))

    async def scenario(address) -> None:
        await big_topic_published(address, SIZE)
        proxy = SlowDownlink(address, RATE)
        try:
            async with Client(("127.0.0.1", proxy.port), SECRET.encode()) as client:
                started = time.monotonic()
                [topic] = (await client.request("status"))["topics"]
                assert topic["record_type"] == "x" * SIZE
                assert time.monotonic() - started >= 0.9 * SIZE / RATE  # (it did take that long to come)
                # the connection is still open, and answers (the same 3 MB)
                assert not client._session.closed.done()
                assert [t["name"] for t in (await client.request("status"))["topics"]] == ["big"]
        finally:
            proxy.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
