"""Session 42: an app's connection to the coordinator (`Directory`: a
publisher's, a subscriber's, a service's) reading a big reply on a slow
downlink is not closed by the coordinator's heartbeat.

The coordinator pings a client it has not heard from for a period, and
that ping waits behind the reply it is sending; a lookup of a topic whose
record type is big (900 KB through 1 MB/s, a 0.5 s heartbeat) had the
coordinator close the connection ("No PONG received after 0.25 seconds"),
and forget what the app had said on it (its subscriptions, which
connection its registrations are tied to), at every such lookup. The
commands had a keep-alive for this (`keep_heard`: a ping every half
period); the apps' connections now have the same one.

A coordinator served in the test's loop; the Directory's connection goes
through a proxy (threads) that forwards what the coordinator sends at
RATE bytes a second (test_session41_big_reply_slow_downlink's)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, served_coordinator
from test_session41_big_reply_slow_downlink import SlowDownlink, big_topic_published

from kernel.topics._directory import Directory

HEARTBEAT = 0.5  # seconds: a silent peer is pinged after 0.5 s, its pong awaited 0.25 s
RATE = 1_000_000  # bytes a second, the app's downlink
SIZE = 900_000  # the record type's, in each lookup's reply: 0.9 s to come (the Directory's frames: 1 MiB)


def test_a_big_lookup_reply_on_a_slow_downlink_leaves_the_apps_connection_open(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", str(HEARTBEAT))

    async def scenario(address) -> None:
        await big_topic_published(address, SIZE)
        proxy = SlowDownlink(address, RATE)
        directory = Directory(("127.0.0.1", proxy.port), SECRET.encode())
        try:
            for _ in range(2):
                started = time.monotonic()
                found = await directory.lookup("big", timeout=10)
                assert found["found"] and found["record_type"] == "x" * SIZE
                assert time.monotonic() - started >= 0.9 * SIZE / RATE  # (it did take that long to come)
            # one connection for both: the coordinator closed none (it did after each lookup)
            assert directory.opened == 1 and not directory._ws.closed
        finally:
            await directory.close()
            proxy.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
