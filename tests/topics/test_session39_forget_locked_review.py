"""Session 39, third topics review: the forgetting of the apps'
subscriptions left from before a coordinator restart
(`_topics.forget_untied_subscriptions`) meets a catalog locked by another
program (a backup, an sqlite3 shell) at that moment. It asked once: the
call failed (CatalogBusy) and the dead app's subscription stayed listed for
as long as the topic lived. It is asked again each refresh period, as the
publishers left behind are (`forget_left_behind`)."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, free_port
from test_session39_cut_connections import _until
from test_session39_restart_subscriptions_review import (
    _stopped,
    gone_and_alive_across_a_restart,
    listed_alive_alone,
)

from kernel.system import Client
from kernel.topics._directory import Directory


def test_a_subscription_left_behind_goes_once_a_lock_at_its_forgetting_ends(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("KERNEL_TOPIC_REFRESH", "0.5")  # (the coordinator's period: its checks)
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", "0.5")

    async def scenario() -> None:
        address = ("127.0.0.1", free_port())
        data = tmp_path / "data"
        alive = Directory(address, SECRET.encode(), timeout=5.0)
        served = None
        try:
            served = await gone_and_alive_across_a_restart(address, data, alive, catalog_timeout=0.3)
            # another program holds the catalog's write lock across the first forgetting
            # (a refresh period after the start; the catalog waits 0.3 s for it)
            holder = sqlite3.connect(data / "catalog.sqlite", isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")
            try:
                await _until(lambda: "could not forget the apps' subscriptions" in caplog.text, 5.0,
                             "the forgetting to meet the lock")
            finally:
                holder.rollback()
                holder.close()
            await _until(lambda: alive.opened == 2 and alive._again is not None and alive._again.done(),
                         5.0, "the live app to say its subscription again")
            async with Client(address, SECRET.encode()) as status:
                await listed_alive_alone(status)
        finally:
            await alive.close()
            if served is not None:
                await _stopped(served)

    asyncio.run(scenario())
