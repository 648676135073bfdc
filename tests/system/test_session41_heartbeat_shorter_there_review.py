"""Session 41, review: a command reading a big reply on a slow downlink is
not cut off by a coordinator whose heartbeat is shorter than the
command's own.

The command pings every half period (`_keep_heard`) so that the
coordinator, whose ping waits behind the reply it is sending, hears from
it. The period was the command's own (KERNEL_COORDINATOR_HEARTBEAT, else
twice KERNEL_HEARTBEAT, as the command's environment says): a coordinator
started with a shorter one (its service's environment, not the user's
shell) pinged a client silent for its period, and closed the connection
of a client reading a big reply (0.5 s there, the default 5 s here, a 3 MB
reply at 2 MB/s: "connection closed" at the next request). The coordinator
now says its period in its handshake's meta, and the command pings at
half the shorter of the two.

A coordinator served in the test's loop (its heartbeat 0.5 s); a topic
registered with a 3 MB record type makes its `status` 3 MB; the command's
connection (its heartbeat the default) goes through a proxy that forwards
what the coordinator sends at RATE bytes a second."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _system import SECRET, served_coordinator
from test_session41_big_reply_slow_downlink import SlowDownlink, big_topic_published

from kernel.system import Client

THERE = "0.5"  # seconds: the coordinator's heartbeat
RATE = 2_000_000  # bytes a second, the client's downlink
SIZE = 3_000_000  # the reply's: 1.5 s to come, three of the coordinator's periods


def test_a_big_reply_from_a_coordinator_with_a_shorter_heartbeat_leaves_the_connection_open(tmp_path,
                                                                                             monkeypatch):
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", THERE)  # (read as the coordinator starts)

    async def scenario(address) -> None:
        await big_topic_published(address, SIZE)
        monkeypatch.delenv("KERNEL_COORDINATOR_HEARTBEAT")  # (the command's own: the default, 5 s)
        monkeypatch.delenv("KERNEL_HEARTBEAT", raising=False)
        proxy = SlowDownlink(address, RATE)
        try:
            async with Client(("127.0.0.1", proxy.port), SECRET.encode()) as client:
                [topic] = (await client.request("status"))["topics"]
                assert topic["record_type"] == "x" * SIZE
                # the connection is still open, and answers (the same 3 MB)
                assert not client._session.closed.done()
                assert [t["name"] for t in (await client.request("status"))["topics"]] == ["big"]
        finally:
            proxy.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
