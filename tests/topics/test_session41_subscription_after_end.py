"""Session 41: an app's subscription said again (`Directory.say_again`, on a
new connection) after its topic ended writes no row.

A publisher unpublishes once each subscriber has read its END; the
subscriber unsubscribes as it finishes. A connection to the coordinator that
broke in between had the subscription said again after the end: a row no
topic showed (not in `status`), until the subscriber's unsubscribe; a
publisher of the same name registering meanwhile was listed with that
subscriber, which never reads it. A topic taken out as gone keeps its
subscriptions (they wait for a new publisher): not these.

A coordinator served in the test's loop; the requests are the ones the
apps' publisher and subscriber send (`kernel.topics`), on real connections."""

from __future__ import annotations

import asyncio

from _served import SECRET, publisher, served_coordinator

from kernel.system import Client

SUBSCRIBER = {"name": "readings", "job": "app:s", "process": 0}


def test_a_subscription_said_again_after_its_topic_ended_is_not_listed_under_the_next_publisher(tmp_path):
    async def scenario(address) -> None:
        async with Client(address, SECRET.encode()) as first, Client(address, SECRET.encode()) as app:
            await first.request("topic_publish", **publisher("p1"))
            await app.request("topic_subscribe", **SUBSCRIBER)
            [topic] = (await app.request("status"))["topics"]
            assert topic["subscribers"] == ["app:s"]
            await first.request("topic_unpublish", name="readings", id="p1", partition=0)
            assert (await app.request("status"))["topics"] == []
            # the subscription said again on a new connection, after the end
            async with Client(address, SECRET.encode()) as again:
                await again.request("topic_subscribe", **SUBSCRIBER)
                async with Client(address, SECRET.encode()) as second:
                    await second.request("topic_publish", **publisher("p2"))
                    [topic] = (await second.request("status"))["topics"]
                    assert (topic["job"], topic["subscribers"]) == ("app:p2", [])
                    assert (await second.request("catalog"))["subscriptions"] == []

    asyncio.run(served_coordinator(tmp_path / "data", scenario))


def test_a_subscription_to_a_name_that_has_not_ended_is_kept(tmp_path):
    """(No publisher, none ended: as a subscription said again while its
    publisher is taken out as gone, it stays, for the next publisher.)"""
    async def scenario(address) -> None:
        async with Client(address, SECRET.encode()) as app:
            await app.request("topic_subscribe", **SUBSCRIBER)
            async with Client(address, SECRET.encode()) as second:
                await second.request("topic_publish", **publisher("p2"))
                [topic] = (await second.request("status"))["topics"]
                assert topic["subscribers"] == ["app:s"]

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
