"""Session 39: a connection to the coordinator that a middlebox drops
without a FIN or RST (a real proxy, here a thread, that stops forwarding
and keeps both sockets open) is noticed on both sides within 1.5
heartbeats (`kernel.topics._directory.coordinator_heartbeat`, short here):
the coordinator handles it as a broken connection, and the client connects
again and says its lookup and subscription again. Unnoticed, a dead
publisher cut off so stayed listed for good, the client's next request
waited for its whole timeout, and a subscriber the coordinator had
forgotten waited for ever for a publisher that had ended meanwhile."""

from __future__ import annotations

import asyncio
import selectors
import socket
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, served_coordinator

from kernel.system import Client, _coordinator, _topics
from kernel.topics._directory import Directory, reader_name

HEARTBEAT = 0.5  # seconds (KERNEL_COORDINATOR_HEARTBEAT): a cut noticed within 0.75 s
_DEAD = {"name": "dead", "id": "p-dead", "job": "app:dead:1", "kind": "stream", "record_type": None,
         "partitions": 1, "partition": 0, "address": "127.0.0.1:9"}  # (nothing answers there)


class BlackholeProxy:
    """Forwards TCP connections to `target` (a thread) until `blackhole()`:
    from then on the connections it has are kept open, and what comes on
    them is dropped (no FIN, no RST); new connections are forwarded."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self._pairs: list[list] = []  # [client socket, upstream socket, forwarding]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def blackhole(self) -> None:
        for pair in list(self._pairs):
            pair[2] = False

    def _run(self) -> None:
        with selectors.DefaultSelector() as chosen:
            chosen.register(self.listener, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in chosen.select(0.05):
                    if key.fileobj is self.listener:
                        client, _ = self.listener.accept()
                        pair = [client, socket.create_connection(self.target), True]
                        self._pairs.append(pair)
                        chosen.register(pair[0], selectors.EVENT_READ, (pair, pair[1]))
                        chosen.register(pair[1], selectors.EVENT_READ, (pair, pair[0]))
                        continue
                    pair, other = key.data
                    if pair not in self._pairs:
                        continue  # (both ends closed for the other's end, in this round)
                    try:
                        data = key.fileobj.recv(65536)
                    except OSError:
                        data = b""
                    if not data and not pair[2]:
                        chosen.unregister(key.fileobj)  # (a close is dropped too: the other end stays open)
                    elif not data:
                        for end in pair[:2]:
                            chosen.unregister(end)
                            end.close()
                        self._pairs.remove(pair)
                    elif pair[2]:
                        try:
                            other.sendall(data)
                        except OSError:
                            pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.listener.close()
        for pair in self._pairs:
            for end in pair[:2]:
                end.close()


async def _until(condition, timeout: float, what: str | None) -> None:
    """Until `condition()`, `timeout` seconds at most: then an error naming
    `what` (None: go on; a later check says what went wrong)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            assert what is None, f"timed out after {timeout:g} s waiting for {what}"
            return
        await asyncio.sleep(0.02)


def _serving(monkeypatch) -> list:
    """The coordinator servers made from now on (the test reads their sessions)."""
    servers = []

    class Kept(_coordinator.CoordinatorServer):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            servers.append(self)

    monkeypatch.setattr(_coordinator, "CoordinatorServer", Kept)
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", str(HEARTBEAT))
    return servers


def test_a_connection_cut_silently_is_noticed_on_both_sides(tmp_path, monkeypatch):
    """A publisher registered through the proxy, at a dead address, and cut
    off: the coordinator takes it out of the catalog (it stayed listed for
    good), and the client's next request is answered at once on a new
    connection (it waited its whole answer time, 10 s here, then failed)."""
    _serving(monkeypatch)

    async def scenario(address) -> None:
        proxy = BlackholeProxy(address)
        directory = Directory(("127.0.0.1", proxy.port), SECRET.encode(), timeout=5.0)
        try:
            async with Client(address, SECRET.encode()) as status:
                async def listed() -> list:
                    return [t["name"] for t in (await status.request("status"))["topics"]]

                await directory.request("topic_publish", **_DEAD)
                assert await listed() == ["dead"]
                proxy.blackhole()
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 10 * HEARTBEAT + 5  # (the checks of `forget_lost`: 2.5 s)
                while await listed():
                    assert loop.time() < deadline, "the cut-off publisher's registration stayed listed"
                    await asyncio.sleep(0.05)
                await _until(lambda: directory._ws is None or directory._ws.closed, 10 * HEARTBEAT,
                             "the client to see its connection cut")
                started = loop.time()
                found = await directory.request("topic_lookup", name="dead", job="app:reader:1/r")
                assert found == {"found": False}
                assert loop.time() - started < 4.0, "the next request waited on the cut connection"
                assert directory.opened == 2
        finally:
            await directory.close()
            proxy.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))


def test_a_subscriber_cut_off_is_still_a_reader_and_finds_the_topic_ended(tmp_path, monkeypatch):
    """A subscriber (its lookup and subscription said again where its
    connection ends: `Directory.say_again`, as `subscribe` does) is cut
    off; the coordinator forgets what that connection said, its readers
    once gone for READER_GRACE (0 here). A new publisher then publishes and
    ends: the subscriber, a reader again on its new connection, finds the
    topic ended. Forgotten, it found nothing, and waited for ever."""
    servers = _serving(monkeypatch)
    monkeypatch.setattr(_topics, "READER_GRACE", 0.0)
    stream = dict(_DEAD, name="readings", id="p1", job="app:publisher:1")

    async def scenario(address) -> None:
        [server] = servers
        proxy = BlackholeProxy(address)
        directory = Directory(("127.0.0.1", proxy.port), SECRET.encode(), timeout=5.0)
        who = {"name": "readings", "job": reader_name().partition("/")[0], "process": 0}
        try:
            async with Client(address, SECRET.encode()) as publisher:
                await publisher.request("topic_publish", **stream)
                others = set(server._sessions)
                found = await directory.lookup("readings", 5.0)
                assert found["id"] == "p1"
                await directory.request("topic_subscribe", **who)
                directory.say_again("its lookup", "topic_lookup", name="readings", job=reader_name())
                directory.say_again("its subscription", "topic_subscribe", **who)
                [cut] = set(server._sessions) - others
                proxy.blackhole()
                await _until(lambda: cut not in server._sessions, 10 * HEARTBEAT,
                             "the coordinator to see the connection cut")
                # (the subscriber connects again and says its lookup again: what is checked below)
                await _until(lambda: directory.opened == 2 and directory._again is not None
                             and directory._again.done(), 10 * HEARTBEAT, None)
                # another reader's lookup: the readers gone for the grace are forgotten
                await publisher.request("topic_lookup", name="readings", job="app:other:1/r")
                # the publisher lost, a new one publishes and ends before the subscriber looks again
                await publisher.request("topic_publish", **dict(stream, id="p2"))
                await publisher.request("topic_unpublish", name="readings", id="p2", partition=0)
                again = await directory.request("topic_lookup", name="readings", job=reader_name())
                assert (again.get("found"), again.get("id"), again.get("addresses")) == \
                    (True, "p2", ["ended"]), f"the subscriber was forgotten, and would wait: {again}"
                status = await publisher.request("status")
                assert status["topics"] == []  # (ended)
        finally:
            await directory.close()
            proxy.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))


def test_a_lost_publisher_taken_out_and_listed_again_is_found_again(tmp_path):
    """A subscriber waiting past a lost publisher (`lookup(not_id=)`) finds
    it again once the catalog, having taken it out, lists it again: it had
    only been stopped or blocked past its heartbeat (and the coordinator's
    probes), and said its registration again once it ran. It waited for a
    new publisher for ever while that one published on."""
    stream = dict(_DEAD, name="readings", id="p1", job="app:publisher:1")

    async def scenario(address) -> None:
        directory = Directory(address, SECRET.encode(), timeout=5.0)
        try:
            publisher = Directory(address, SECRET.encode(), timeout=5.0)
            await publisher.request("topic_publish", **stream)
            assert (await directory.lookup("readings", 5.0))["id"] == "p1"
            answers, ask = [], directory.answered

            async def answered(*args, **fields) -> dict:
                answers.append(await ask(*args, **fields))
                return answers[-1]

            directory.answered = answered
            waiting = asyncio.ensure_future(directory.lookup("readings", 10.0, not_id="p1"))
            await publisher.abandon()  # (no close frame: its dead address is asked, and it is taken out)
            async with Client(address, SECRET.encode()) as status:
                await _until(lambda: {"found": False} in answers, 10.0, "the waiting lookup to find it gone")
                assert not waiting.done()
                again = await status.request("topic_publish", **stream, refresh=True)
                assert again == {"again": True}
            found = await asyncio.wait_for(waiting, 5.0)
            assert found["id"] == "p1"
        finally:
            await directory.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
