"""Session 39 review: the heartbeat of a connection to the coordinator is
twice KERNEL_HEARTBEAT where KERNEL_COORDINATOR_HEARTBEAT is not set, as
the README says (and tells a kernel that blocks long to set KERNEL_HEARTBEAT
longer). It was twice the links' constant default, 5 s whatever
KERNEL_HEARTBEAT said. Checked on a real cut (test_session39_cut_connections'
blackholing proxy): with KERNEL_HEARTBEAT=0.25 the client sees it within
0.75 s, where 5 s took 7.5."""

from __future__ import annotations

import asyncio
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, served_coordinator
from test_session39_cut_connections import BlackholeProxy, _until

from kernel.topics._directory import Directory, coordinator_heartbeat


def test_the_coordinator_heartbeat_follows_kernel_heartbeat(tmp_path, monkeypatch):
    monkeypatch.delenv("KERNEL_COORDINATOR_HEARTBEAT", raising=False)
    monkeypatch.setenv("KERNEL_HEARTBEAT", "30")
    assert coordinator_heartbeat() == 60.0  # (a kernel that blocks long: set it longer)
    monkeypatch.setenv("KERNEL_HEARTBEAT", "1e308")
    assert math.isfinite(coordinator_heartbeat())  # (doubled, inf: aiohttp cannot schedule it)
    monkeypatch.setenv("KERNEL_HEARTBEAT", "0.25")

    async def scenario(address) -> None:
        proxy = BlackholeProxy(address)
        directory = Directory(("127.0.0.1", proxy.port), SECRET.encode(), timeout=5.0)
        try:
            assert (await directory.request("topic_lookup", name="x", job="app:r:1/r")) == {"found": False}
            proxy.blackhole()
            # (0.75 s at most with the heartbeat followed; 7.5 s with 5 s)
            await _until(lambda: directory._ws is None or directory._ws.closed, 4.0,
                         "the client to see its connection cut (KERNEL_HEARTBEAT=0.25)")
        finally:
            await directory.close()
            proxy.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
