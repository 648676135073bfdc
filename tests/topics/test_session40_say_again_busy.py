"""Session 40: a subscriber that ends while its subscription, said again on
a new connection to the coordinator (`Directory._say_again`), is refused
because the catalog is locked (`busy`, asked again every BUSY_EVERY) is not
listed again after its unsubscribe.

`_asked` sent the refused subscription again after its pause whatever had
happened meanwhile: the subscriber's end (`Subscribe._follow`: its lookup
and subscription taken back, then `topic_unsubscribe`) got in during the
pause, once the lock was let go, and the subscription written after it
listed the app for as long as the topic lived (its connection then closed
cleanly, which forgets nothing). The steps are ordered on events: another
program (a real second connection to the catalog's SQLite file) holds the
catalog's write lock until the say-again's refusal is logged; the
unsubscribe is made in the pause that follows (BUSY_EVERY, 0.1 s: the
say-again task sleeps, so the request takes the connection first)."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, free_port
from test_session39_cut_connections import _until
from test_session39_restart_subscriptions_review import _serving, _stopped
from test_session39_say_again_race_review import subscribed_saying_again

from kernel.system import Client
from kernel.topics._directory import Directory, reader_name


class _Refused(logging.Handler):
    """Sets `event` when a request refused busy is to be asked again (the
    warning `Directory._asked` logs just before its pause)."""

    def __init__(self, event: asyncio.Event) -> None:
        super().__init__(logging.WARNING)
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        if "asking again for up to" in record.getMessage():
            self.event.set()


def test_a_subscriber_ending_while_its_subscription_said_again_is_refused_busy_stays_unsubscribed(tmp_path):
    async def scenario() -> None:
        address = ("127.0.0.1", free_port())
        data = tmp_path / "data"
        served = await _serving(address[1], data, catalog_timeout=0.3)
        directory = Directory(address, SECRET.encode(), timeout=5.0)
        who = {"name": "readings", "job": reader_name().partition("/")[0], "process": 0}
        refused = asyncio.Event()
        handler = _Refused(refused)
        logging.getLogger("kernel.topics").addHandler(handler)
        holder = None
        try:
            async with Client(address, SECRET.encode()) as status:
                await subscribed_saying_again(status, directory, who)
                # another program holds the catalog's write lock: the subscription said
                # again is refused busy (its lookup, a read, is answered)
                holder = sqlite3.connect(data / "catalog.sqlite", isolation_level=None)
                holder.execute("BEGIN IMMEDIATE")
                directory._ws.get_extra_info("socket").shutdown(socket.SHUT_RDWR)  # (cut: both see it end)
                await asyncio.wait_for(refused.wait(), 10.0)
                holder.rollback()  # (the lock goes during the say-again's pause)
                # the subscriber ends in that pause, as `_follow` does
                directory.say_again("its lookup", None)
                directory.say_again("its subscription", None)
                await directory.request("topic_unsubscribe", **who)
                await _until(lambda: directory._again.done(), 5.0, "saying again to end")
                listed = (await status.request("catalog"))["subscriptions"]
                assert listed == [], f"listed again after its unsubscribe: {listed}"
        finally:
            logging.getLogger("kernel.topics").removeHandler(handler)
            if holder is not None:
                holder.close()
            await directory.close()
            await _stopped(served)

    asyncio.run(scenario())
