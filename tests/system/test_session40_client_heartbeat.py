"""Session 40: the client commands' connection to the coordinator
(`kernel.system.Client`: `status`, `submit --wait`, `logs --follow`, ...)
has the heartbeat of the apps' connections (KERNEL_COORDINATOR_HEARTBEAT,
twice KERNEL_HEARTBEAT by default): a peer gone silently (a firewall's
drop: no FIN, no RST) is noticed within 1.5 periods, and said as a
request that is not answered is (NoAnswer, which a following command
reconnects on). It had none: a request noticed it at its own timeout
only, 60 s for a `logs` (each of `logs --follow`'s), 15 s for a `wait`.

A coordinator served in the test's loop; the connection goes through a
proxy (a thread) that stops forwarding and keeps both sockets open."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "topics"))
from _system import SECRET, served_coordinator
from test_session39_cut_connections import BlackholeProxy

from kernel.system import Client
from kernel.system._wire import NoAnswer

HEARTBEAT = 0.5  # seconds: a silent peer noticed within 0.75 s


def test_a_command_notices_a_silently_dead_coordinator_within_the_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", str(HEARTBEAT))

    async def scenario(address) -> None:
        proxy = BlackholeProxy(address)
        try:
            async with Client(("127.0.0.1", proxy.port), SECRET.encode()) as client:
                assert (await client.request("status"))["topics"] == []
                proxy.blackhole()
                loop = asyncio.get_running_loop()
                started = loop.time()
                try:
                    # (bounded here: without a heartbeat it waited its whole 60 s)
                    await asyncio.wait_for(client.request("status"), 10 * HEARTBEAT)
                    raise AssertionError("a coordinator cut off answered")
                except NoAnswer as exc:
                    error = str(exc)
                took = loop.time() - started
            assert error == f"the coordinator at 127.0.0.1:{proxy.port} did not answer the connection's " \
                "heartbeat during 'status' (frozen, or cut off)"
            # (a ping after a period of silence, its pong awaited half a period; and the loop's slack)
            assert took < 1.5 * HEARTBEAT + 1.0, f"noticed after {took:.2f} s"
        finally:
            proxy.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
