"""Session 38: a connection to the coordinator that registered two
partitions of a topic (a client of its own: each kernel of ours registers
its partition on a connection of its own) still counts as the topic's
after one partition has ended: once it breaks, its publisher gone, the
topic leaves the catalog (it stayed listed for good, the partition still
publishing at a dead address)."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, served_coordinator

from kernel.system import Client


def _dead_address() -> str:
    """A loopback address where nothing listens (bound a moment ago, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_one_partitions_end_leaves_the_others_registration_tied_to_its_connection(tmp_path, caplog,
                                                                                  monkeypatch):
    import logging


    # (the check of registrations left from before the coordinator's start, which would take
    # this one out too, comes a refresh period after it: not within the test)
    monkeypatch.setenv("KERNEL_TOPIC_REFRESH", "1000")

    fields = {"name": "two", "id": "p1", "job": "app:hand:1", "kind": "stream", "record_type": None,
              "partitions": 2}

    async def listed(address) -> list:
        async with Client(address, SECRET.encode()) as client:
            return [t["publisher"] for t in (await client.request("status"))["topics"] if t["name"] == "two"]

    async def scenario(address) -> None:
        async with Client(address, SECRET.encode()) as publisher:
            for partition in (0, 1):
                await publisher.request("topic_publish", **fields, partition=partition,
                                        address=_dead_address())
            await publisher.request("topic_unpublish", name="two", id="p1", partition=0)
            publisher._session.ws._response.connection.transport.abort()  # (killed: no close frame)
        deadline = asyncio.get_running_loop().time() + 10
        while addresses := await listed(address):
            assert asyncio.get_running_loop().time() < deadline, f"the gone publisher is listed: {addresses}"
            await asyncio.sleep(0.05)

    with caplog.at_level(logging.WARNING, logger="kernel.system"):
        asyncio.run(served_coordinator(tmp_path / "data", scenario))
    assert "topic 'two': publisher p1 (app:hand:1) is gone" in caplog.text
