"""Session 40: an app whose connection to a restarted coordinator it
closes itself, cleanly, having given up on a slow answer (`Directory`'s
request past its answer time), says what `say_again` keeps (its lookup and
subscription) again on a new connection at once, not at its next request.

The coordinator forgets, a refresh period after its start, the apps'
subscriptions said on no open connection (`forget_untied_subscriptions`),
and a connection closed with a close frame forgets nothing of its own: a
live subscriber whose connection had so closed was forgotten then, and
stayed unlisted until its next request, which a subscriber reading on
does not make. (Without a restart, such an app killed before its next
request stayed listed for good: nothing it said was on a connection that
could break.)

The answer is held by a proxy (a thread) that stops forwarding the
coordinator's side of its connections for a while, as a congested link
would; the catalog's write lock, held by a real second connection to the
SQLite file, keeps the forgetting from running before the clean close is
handled (each try refused, and asked again a period later)."""

from __future__ import annotations

import asyncio
import selectors
import socket
import sqlite3
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, free_port
from test_session39_cut_connections import _serving as _kept_servers
from test_session39_cut_connections import _until
from test_session39_restart_subscriptions_review import _stopped, gone_and_alive_across_a_restart

from kernel.system import Client
from kernel.topics._directory import CoordinatorUnreachable, Directory


class HoldingProxy:
    """Forwards TCP connections to `target` (a thread); while `holding`,
    what the target sends is kept back (sent on once it is not)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.holding = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self._held: dict[socket.socket, bytearray] = {}  # client socket -> what waits for it
        self._ends: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with selectors.DefaultSelector() as chosen:
            chosen.register(self.listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                if not self.holding:
                    for client, data in self._held.items():
                        if data:
                            client.sendall(data)
                            data.clear()
                for key, _ in chosen.select(0.01):
                    if key.fileobj is self.listener:
                        client, _ = self.listener.accept()
                        try:
                            upstream = socket.create_connection(self.target)
                        except OSError:  # (the target restarting: the client tries again)
                            client.close()
                            continue
                        self._held[client] = bytearray()
                        self._ends += [client, upstream]
                        chosen.register(client, selectors.EVENT_READ, (upstream, False))
                        chosen.register(upstream, selectors.EVENT_READ, (client, True))
                        continue
                    other, from_target = key.data
                    try:
                        data = key.fileobj.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        chosen.unregister(key.fileobj)
                        try:
                            other.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                    elif from_target and (self.holding or self._held[other]):
                        self._held[other] += data
                    else:
                        try:
                            other.sendall(data)
                        except OSError:
                            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()
        for end in self._ends:
            end.close()


async def _listed(status) -> list:
    return sorted(row["job"] for row in (await status.request("catalog"))["subscriptions"])


def test_an_app_that_gave_up_on_an_answer_says_its_subscription_again_at_once(tmp_path, monkeypatch):
    servers = _kept_servers(monkeypatch)
    monkeypatch.setenv("KERNEL_TOPIC_REFRESH", "1.5")  # (the coordinator's period: its forgetting)
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", "5.0")  # (no ping unanswered while held)

    async def scenario() -> None:
        address = ("127.0.0.1", free_port())
        data = tmp_path / "data"
        proxy = HoldingProxy(address)
        # (an answer given up on after 2.1 s: the timeout and a grace of 2 s)
        alive = Directory(("127.0.0.1", proxy.port), SECRET.encode(), timeout=0.1)
        served = holder = None
        try:
            served = await gone_and_alive_across_a_restart(address, data, alive, catalog_timeout=0.3)
            [_, server] = servers
            await _until(lambda: alive.opened == 2 and alive._again is not None and alive._again.done(),
                         5.0, "the live app to say its subscription again")
            async with Client(address, SECRET.encode()) as status:
                assert await _listed(status) == ["app:alive:2", "app:gone:1"], "forgotten too early"
                # another program holds the catalog's write lock: the forgetting waits
                holder = sqlite3.connect(data / "catalog.sqlite", isolation_level=None)
                holder.execute("BEGIN IMMEDIATE")
                proxy.holding = True
                try:
                    await alive.request("topic_lookup", name="dead", job="app:alive:2/r")
                    raise AssertionError("the answer held was not given up on")
                except CoordinatorUnreachable:
                    pass
                finally:
                    proxy.holding = False
                # the coordinator has seen the app's connection close cleanly
                await _until(lambda: not any(("dead", "app:alive:2", 0) in said
                                             for said in server._subscribed.values()) or alive.opened > 2,
                             5.0, "the coordinator to see the connection close")
                holder.rollback()  # (the forgetting, a period later, goes through)
                deadline = asyncio.get_running_loop().time() + 10.0
                while "app:gone:1" in await _listed(status):
                    assert asyncio.get_running_loop().time() < deadline, "the gone app stayed listed"
                    await asyncio.sleep(0.05)
                await _until(lambda: alive.opened == 3 and alive._again.done(), 5.0, None)
                listed = await _listed(status)
                assert listed == ["app:alive:2"], f"the live app was forgotten: listed {listed}"
        finally:
            if holder is not None:
                holder.close()
            await alive.close()
            proxy.close()
            if served is not None:
                await _stopped(served)

    asyncio.run(scenario())
