"""Session 39 review: an app's subscription the catalog kept across a
coordinator restart, which no connection says again (the app died while
the coordinator was down, or before it was back), leaves the status list
once a refresh period has passed, as a publisher left behind does
(`CoordinatorServer.check_left_behind`); one said again stays.

It stayed listed for as long as the topic lived: the coordinator forgets
an app's subscriptions when the connection they were said on breaks
(`_topics.forget_subscriptions`), and this one was said on none. Two
coordinators served in the test's loop, one after the other, on one port
and one catalog."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, free_port
from test_session39_cut_connections import _DEAD, _until

from kernel.system import Client
from kernel.system._coordinator import serve
from kernel.topics._directory import Directory

GONE = {"name": "dead", "job": "app:gone:1", "process": 0}
ALIVE = {"name": "dead", "job": "app:alive:2", "process": 0}


async def _serving(port: int, data: Path, **options) -> asyncio.Task:
    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    served = asyncio.ensure_future(serve("127.0.0.1", port, SECRET.encode(), data, ready=ready.set_result,
                                         **options))
    await ready
    return served


async def gone_and_alive_across_a_restart(address, data: Path, alive: Directory, **options) -> asyncio.Task:
    """Two apps subscribe to `dead`; the coordinator stops and the gone app
    with it; the coordinator serves again (returned), `alive` saying its
    subscription again on a new connection, the gone one on none."""
    served = await _serving(address[1], data, **options)
    async with Client(address, SECRET.encode()) as gone:
        await gone.request("topic_publish", **_DEAD)
        await gone.request("topic_subscribe", **GONE)
        await alive.request("topic_subscribe", **ALIVE)
        alive.say_again("its subscription", "topic_subscribe", **ALIVE)
        await _stopped(served)  # (the gone app then dies while the coordinator is down)
    return await _serving(address[1], data, **options)


async def _stopped(served: asyncio.Task) -> None:
    served.cancel()
    await asyncio.gather(served, return_exceptions=True)


async def _subscriptions(status) -> list:
    return sorted(row["job"] for row in (await status.request("catalog"))["subscriptions"])


async def listed_alive_alone(status) -> None:
    """Until the status lists the live app's subscription alone (5 s at most)."""
    deadline = asyncio.get_running_loop().time() + 5.0
    while (listed := await _subscriptions(status)) != ["app:alive:2"]:
        assert asyncio.get_running_loop().time() < deadline, f"still listed: {listed}"
        await asyncio.sleep(0.05)


def test_an_app_subscription_no_connection_says_again_after_a_restart_leaves_the_list(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNEL_TOPIC_REFRESH", "0.2")  # (the coordinator's period: its checks)
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", "0.5")

    async def scenario() -> None:
        address = ("127.0.0.1", free_port())
        alive = Directory(address, SECRET.encode(), timeout=5.0)
        served = None
        try:
            served = await gone_and_alive_across_a_restart(address, tmp_path / "data", alive)
            async with Client(address, SECRET.encode()) as status:
                await _until(lambda: alive.opened == 2 and alive._again is not None and alive._again.done(),
                             5.0, "the live app to say its subscription again")
                await listed_alive_alone(status)
        finally:
            await alive.close()
            if served is not None:
                await _stopped(served)

    asyncio.run(scenario())
