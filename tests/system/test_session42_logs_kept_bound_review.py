"""Executors leaving at once (a cluster stopped: each executor SIGTERMed
together) keep no more of their logs' tails in all than KEEP_MOST. Each
leave's room was counted from the bytes already kept: one whose fetch was
under way, nothing kept yet, left the next all the room again, and N
executors leaving together held N times the bound
(`kernel.system._logs.LeftLogs.fetch`).

Real processes and sockets: two executors and their log files; the
coordinator is served in the test's loop, where its two leaves' fetches
(what each "left" does first) are begun together, as two "left"s that
come at once are."""

from __future__ import annotations

import asyncio

from _system import SECRET, System

from kernel.system import _coordinator, _logs
from kernel.system._logs import KEEP_MOST_PER_LOG


async def test_two_executors_leaving_at_once_keep_at_most_the_bound_in_all(tmp_path, monkeypatch):
    monkeypatch.setattr(_logs, "KEEP_MOST", KEEP_MOST_PER_LOG + (1 << 20))  # (room for one and a bit)
    servers = []

    class Recorded(_coordinator.CoordinatorServer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            servers.append(self)

    monkeypatch.setattr(_coordinator, "CoordinatorServer", Recorded)
    system = System(tmp_path)
    served = asyncio.ensure_future(_coordinator.serve(system.host, system.port, SECRET.encode(),
                                                      tmp_path / "data"))
    try:
        system.start_executor(1)
        system.start_executor(1)
        ids = await asyncio.to_thread(lambda: [system.executor_id(p) for p in system.executors])
        async with asyncio.timeout(30):
            while not (servers and set(ids) <= set(servers[0].master.connected)):
                await asyncio.sleep(0.02)
        (server,) = servers
        left = server.left_logs
        reader = left.reader()  # (a connection reading each executor's log from its start)
        for n, executor in enumerate(ids, 1):
            (tmp_path / f"executor{n}" / "logs").mkdir(exist_ok=True)
            (tmp_path / f"executor{n}" / "logs" / "j.log").write_bytes(b"x" * (5 << 20))
            left.asked(reader, "j", executor, 0)
        await asyncio.gather(*(left.fetch(server.master.connected[e].session, e) for e in ids))
        kept = 0
        for executor in ids:
            offset = 0
            while (piece := left.piece("j", executor, offset)) is not None and piece["text"]:
                kept += len(piece["text"])
                offset = piece["offset"]
        assert 0 < kept <= _logs.KEEP_MOST, (kept, _logs.KEEP_MOST)
    finally:
        system.close()
        served.cancel()
        await asyncio.gather(served, return_exceptions=True)
