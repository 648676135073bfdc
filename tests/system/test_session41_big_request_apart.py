"""Session 41: a command's big request (a pipeline file, up to 64 MiB in one
message) goes out on a connection of its own, without a heartbeat
(`Client._ask_apart`); the command's connection keeps aiohttp's heartbeat
as it is, idle meanwhile. It went out on the command's connection with
that heartbeat paused by reaching into aiohttp's private members
(`_heartbeat`, `_cancel_heartbeat`, `_reset_heartbeat`, 3.14's; guarded: an
aiohttp without them cut a 3 MB request on a 2 MB/s uplink after 0.75 s
with a 0.5 s heartbeat).

A coordinator served in the test's loop; the connections go through a
proxy (threads) that forwards what the client sends at RATE bytes a second
and counts it per connection."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "topics"))
from _system import SECRET, served_coordinator
from test_session40_heartbeat_big_request_review import RATE, SIZE, SlowUplink, a_big_request

from kernel.system import Client
from kernel.system._client import BIG_REQUEST

HEARTBEAT = 0.5  # seconds: a silent peer noticed within 0.75 s


class CountingUplink(SlowUplink):
    """SlowUplink, counting the bytes the client sent on each connection
    (in the order they were accepted)."""

    def __init__(self, target: tuple[str, int], rate: float) -> None:
        self.sent: dict[int, int] = {}
        super().__init__(target, rate)

    def _opened(self, source: socket.socket) -> None:
        self.sent[id(source)] = 0

    def _forwarded(self, source: socket.socket, n: int) -> None:
        self.sent[id(source)] += n


def test_a_big_request_goes_on_a_connection_of_its_own_the_command_keeps_its_own(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", str(HEARTBEAT))

    async def scenario(address) -> None:
        proxy = CountingUplink(address, RATE)
        try:
            async with Client(("127.0.0.1", proxy.port), SECRET.encode()) as client:
                await a_big_request(client)
                # the command's connection, idle meanwhile, is kept and answers
                assert (await client.request("status"))["topics"] == []
                first, *others = proxy.sent.values()
                assert first < BIG_REQUEST and len(others) == 1 and others[0] > SIZE, proxy.sent
        finally:
            proxy.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
