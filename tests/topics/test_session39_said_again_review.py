"""Session 39 review: a subscriber's subscription said again on a new
connection to the coordinator (`Directory.say_again`) stays listed.

- The coordinator forgot an app's subscriptions when a connection of its
  ended broken, by key, though the app had said the same subscription again
  on another connection still open: where the client noticed a cut first
  (its heartbeat's period shorter, or ahead), the subscriber read on,
  unlisted.
- A cut noticed while a request waited (the request asked again on a new
  connection: `Directory._request`) said nothing again: only an end seen
  between requests did (`_read_idle`).

A real blackholing proxy (test_session39_cut_connections'), a coordinator
served in the test's loop."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, served_coordinator
from test_session39_cut_connections import _DEAD, BlackholeProxy, _serving, _until

from kernel.system import Client
from kernel.topics._directory import Directory, reader_name

STREAM = dict(_DEAD, name="readings", id="p1", job="app:publisher:1")


async def _subscribed(server, status, directory) -> tuple[dict, object]:
    """`directory` looks the topic up and subscribes, as `subscribe` does:
    who it is, and the coordinator's session of its connection."""
    who = {"name": "readings", "job": reader_name().partition("/")[0], "process": 0}
    others = set(server._sessions)
    await directory.lookup("readings", 5.0)
    await directory.request("topic_subscribe", **who)
    directory.say_again("its lookup", "topic_lookup", name="readings", job=reader_name())
    directory.say_again("its subscription", "topic_subscribe", **who)
    [session] = set(server._sessions) - others
    return who, session


async def _subscribers(status) -> list:
    await status.request("catalog")  # (after what the catalog had queued: a closed connection's forgetting)
    return [t["subscribers"] for t in (await status.request("status"))["topics"]]


def test_a_subscription_said_again_before_the_coordinator_sees_the_cut_stays_listed(tmp_path, monkeypatch):
    servers = _serving(monkeypatch)
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", "1.0")  # the coordinator's: it notices last

    async def scenario(address) -> None:
        [server] = servers
        monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", "0.2")  # the subscriber's
        proxy = BlackholeProxy(address)
        directory = Directory(("127.0.0.1", proxy.port), SECRET.encode(), timeout=5.0)
        try:
            async with Client(address, SECRET.encode()) as status:
                await status.request("topic_publish", **STREAM)
                who, cut = await _subscribed(server, status, directory)
                proxy.blackhole()
                await _until(lambda: directory.opened == 2 and directory._again is not None
                             and directory._again.done(), 5.0, "the subscriber to say it again")
                assert cut in server._sessions  # (the coordinator has not seen the cut yet)
                await _until(lambda: cut not in server._sessions, 5.0, "the coordinator to see the cut")
                assert await _subscribers(status) == [[who["job"]]], \
                    "the subscription said again was forgotten"
        finally:
            await directory.close()
            proxy.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))


def test_a_cut_noticed_during_a_request_says_the_subscription_again(tmp_path, monkeypatch):
    servers = _serving(monkeypatch)  # (0.5 s both ends)

    async def scenario(address) -> None:
        [server] = servers
        proxy = BlackholeProxy(address)
        directory = Directory(("127.0.0.1", proxy.port), SECRET.encode(), timeout=5.0)
        try:
            async with Client(address, SECRET.encode()) as status:
                await status.request("topic_publish", **STREAM)
                who, cut = await _subscribed(server, status, directory)
                proxy.blackhole()
                # asked at once: it waits on the cut connection until the heartbeat gives it
                # up, and is asked again on a new one
                await directory.request("topic_lookup", name="other", job="app:other:1/r")
                assert directory.opened == 2
                await _until(lambda: cut not in server._sessions, 5.0, "the coordinator to see the cut")
                # (None: on to the check, which says what went wrong)
                await _until(lambda: directory._again is not None and directory._again.done(), 5.0, None)
                assert await _subscribers(status) == [[who["job"]]], "the subscription was not said again"
        finally:
            await directory.close()
            proxy.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
