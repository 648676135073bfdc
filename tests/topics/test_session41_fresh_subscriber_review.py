"""Session 41, review: a subscriber that subscribes to a name after its
topic ended, not having been subscribed to it, is listed under the name's
next publisher.

A subscription said again after its topic ended writes no row (89bbe21:
its subscriber read the END and ends). The check was the name's having
ended: a new subscriber (another app, a job started later) subscribing to
a name whose last publisher had ended waits for the next one (its lookup
is not answered with the ended topic, which only the jobs that found it
get), and reads it, but wrote no row either: `status` listed the next
publisher with no subscribers. Only the subscribers the topic had when it
ended are left out now.

A coordinator served in the test's loop; the requests are the ones the
apps' publisher and subscriber send (`kernel.topics`), on real connections."""

from __future__ import annotations

import asyncio

from _served import SECRET, publisher, served_coordinator

from kernel.system import Client

FIRST = {"name": "readings", "job": "app:s", "process": 0}
LATER = {"name": "readings", "job": "app:t", "process": 0}


def test_a_new_subscriber_after_the_end_is_listed_under_the_next_publisher(tmp_path):
    async def scenario(address) -> None:
        async with Client(address, SECRET.encode()) as first, Client(address, SECRET.encode()) as app:
            await first.request("topic_publish", **publisher("p1"))
            await app.request("topic_subscribe", **FIRST)
            await app.request("topic_lookup", name="readings", job="app:s")
            await first.request("topic_unpublish", name="readings", id="p1", partition=0)
            assert (await app.request("status"))["topics"] == []
            async with Client(address, SECRET.encode()) as later:
                # a subscriber that comes after the end waits for the next publisher
                assert (await later.request("topic_lookup", name="readings", job="app:t"))["found"] is False
                await later.request("topic_subscribe", **LATER)
                # and the first one's, said again on a new connection, is still left out
                async with Client(address, SECRET.encode()) as again:
                    await again.request("topic_subscribe", **FIRST)
                async with Client(address, SECRET.encode()) as second:
                    await second.request("topic_publish", **publisher("p2"))
                    [topic] = (await second.request("status"))["topics"]
                    assert (topic["job"], topic["subscribers"]) == ("app:p2", ["app:t"])

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
