"""Session 39 review: a subscriber that ends while its subscription is
being said again on a new connection to the coordinator (`Directory._say_again`,
its lookup answered first) is not listed again after its unsubscribe.

`_say_again` said a copy of what was kept when it began: the subscriber's
end (`Subscribe._follow`: its lookup and subscription taken back, then
`topic_unsubscribe`) queued behind the lookup in flight, and the
subscription was said after the unsubscribe, the app listed for as long
as the topic lived (its connection then closed cleanly, which forgets
nothing). A coordinator served in the test's loop; the connection cut
at the socket."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, served_coordinator
from test_session39_cut_connections import _DEAD, _serving, _until

from kernel.system import Client
from kernel.topics._directory import Directory, reader_name

STREAM = dict(_DEAD, name="readings", id="p1", job="app:publisher:1")


async def _subscribers(status) -> list:
    await status.request("catalog")  # (after what the catalog had queued)
    return [t["subscribers"] for t in (await status.request("status"))["topics"]]


async def subscribed_saying_again(status: Client, directory: Directory, who: dict) -> None:
    """The topic "readings" published (STREAM), and `who` subscribed to it
    through `directory`, which says its lookup and subscription again on
    every new connection."""
    await status.request("topic_publish", **STREAM)
    await directory.lookup("readings", 5.0)
    await directory.request("topic_subscribe", **who)
    directory.say_again("its lookup", "topic_lookup", name="readings", job=reader_name())
    directory.say_again("its subscription", "topic_subscribe", **who)


def test_a_subscriber_ending_while_its_subscription_is_said_again_stays_unsubscribed(tmp_path, monkeypatch):
    _serving(monkeypatch)

    async def scenario(address) -> None:
        directory = Directory(address, SECRET.encode(), timeout=5.0)
        who = {"name": "readings", "job": reader_name().partition("/")[0], "process": 0}
        try:
            async with Client(address, SECRET.encode()) as status:
                await subscribed_saying_again(status, directory, who)
                directory._ws.get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # (cut: both see it end)
                # its lookup said again, in flight: the subscriber ends meanwhile, as `_follow` does
                deadline = asyncio.get_running_loop().time() + 5.0
                while not (directory._again is not None and directory._lock.locked()):
                    assert asyncio.get_running_loop().time() < deadline, "the lookup was not said again"
                    await asyncio.sleep(0)  # (each turn of the loop: the request is in flight briefly)
                directory.say_again("its lookup", None)
                directory.say_again("its subscription", None)
                await directory.request("topic_unsubscribe", **who)
                await _until(lambda: directory._again.done(), 5.0, "saying again to end")
                assert await _subscribers(status) == [[]], "listed again after its unsubscribe"
        finally:
            await directory.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
