"""Session 36's review of topics' registrations in the coordinator's
catalog (`kernel.system._topics`), with a real coordinator process, real
sockets and, where a test needs the catalog locked, another process
holding its write lock (as tests/system/test_catalog_lock_review.py does)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, System, bytes_kept, served_coordinator, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from test_catalog_lock_review import _hold, _release

from kernel.system import Client


def _dead_address() -> str:
    """A loopback address where nothing listens (bound a moment ago, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def _listed(system: System, name: str) -> list[dict]:
    return [t for t in system.status()["topics"] if t["name"] == name]


def test_a_publisher_gone_while_its_registration_waits_on_a_locked_catalog_leaves_the_catalog(tmp_path):
    """The publisher's registration is queued behind another program's lock
    on the catalog when its connection breaks (the app SIGKILLed); the
    lock goes, the registration is written. Its publisher is gone (nothing
    listens at its address): it leaves the catalog as any killed app's does
    (it was noted on the connection only once written, after the
    connection's end had been handled: listed for good, its dead address
    dialled by every subscriber)."""
    system = System(tmp_path)
    try:
        system.start_coordinator()
        address = (system.host, system.port)

        async def scenario():
            async with Client(address, SECRET.encode()) as publisher:
                holder = _hold(system)
                try:
                    registering = asyncio.ensure_future(publisher.request(
                        "topic_publish", name="locked", id="p1", job="app:gone:1", kind="stream",
                        record_type=None, partitions=1, partition=0, address=_dead_address()))
                    # (answered after the registration's handler is under way: the
                    # coordinator reads a connection's requests in order)
                    await publisher.request("status")
                    assert not registering.done()
                    # the connection breaks, no close frame: the app is killed
                    publisher._session.ws._response.connection.transport.abort()
                    await asyncio.gather(registering, return_exceptions=True)
                finally:
                    _release(holder)

        asyncio.run(scenario())
        wait_until(lambda: not _listed(system, "locked"), timeout=8,
                   what="the gone publisher's registration to leave the catalog")
        assert "topic 'locked': publisher p1 (app:gone:1) is gone" in system.coordinator_log.read_text()
    finally:
        system.close()


def _catalog_version(db: sqlite3.Connection) -> int:
    """SQLite's count of the catalog's changes committed by other connections
    (the coordinator's): unchanged, it wrote nothing."""
    return db.execute("PRAGMA data_version").fetchone()[0]


def test_an_unchanged_refresh_writes_nothing_and_still_ties_the_registration_to_its_connection(tmp_path):
    """A running publisher says its registration again every
    KERNEL_TOPIC_REFRESH seconds, one per partition: where nothing changed,
    the catalog is not written (it was, each time: a big system paid a
    write, and a new listing of every topic, per partition every 10 s). The
    refresh still ties the registration to its connection: that one broken,
    the publisher (gone) leaves the catalog."""
    system = System(tmp_path)
    try:
        system.start_coordinator()
        address = (system.host, system.port)
        fields = {"name": "quiet", "id": "p1", "job": "app:quiet:1", "kind": "stream", "record_type": None,
                  "partitions": 2}
        addresses = [_dead_address(), _dead_address()]
        db = sqlite3.connect(system.root / "data" / "catalog.sqlite")

        async def scenario():
            async with Client(address, SECRET.encode()) as first:
                for partition in (0, 1):
                    await first.request("topic_publish", **fields, partition=partition,
                                        address=addresses[partition])
            # (closed with a close frame: not a publisher gone; as a coordinator restarted,
            # none of its connections is the publisher's now)
            before = _catalog_version(db)
            async with Client(address, SECRET.encode()) as refreshing:
                replies = [await refreshing.request("topic_publish", **fields, partition=p,
                                                    address=addresses[p], refresh=True)
                           for _ in range(5) for p in (0, 1)]
                after = _catalog_version(db)
                refreshing._session.ws._response.connection.transport.abort()  # (the publisher killed)
            return replies, before, after

        replies, before, after = asyncio.run(scenario())
        assert replies == [{}] * 10
        assert after == before, "an unchanged refresh wrote the catalog"
        wait_until(lambda: not _listed(system, "quiet"), timeout=8,
                   what="the gone publisher's registration, refreshed on the broken connection, to go")
        db.close()
    finally:
        system.close()


def test_calls_from_many_client_processes_do_not_grow_the_coordinators_memory(tmp_path):
    """Every lookup noted its reader (an app's: one per process and run),
    kept for as long as the topic lived, so that a stream's subscribers
    find it ended once it has: a service, which never ends so, kept one
    entry per client process that ever called it (30 MB for 200,000
    `kernel.services.call`s from scripts, in a coordinator that runs for
    months). The catalog's calls are made here as the coordinator makes
    them (a real catalog on disk), the Python memory they keep measured."""

    from kernel.system._catalog import Catalog
    from kernel.system._topics import request

    catalog = Catalog(tmp_path / "data")
    service = {"name": "config", "id": "s1", "job": "app:server:1", "kind": "service", "record_type": None,
               "partitions": 1, "partition": 0, "address": "127.0.0.1:9"}

    async def lookups(first: int, count: int) -> None:
        for i in range(first, first + count):
            reader = f"app:client:{i}/run{i}"  # (a client process of its own)
            found = await request(catalog, "topic_lookup", {"name": "config", "job": reader})
            assert found["found"] and found["kind"] == "service"

    async def scenario() -> int:
        await request(catalog, "topic_publish", service)
        # (whatever is made once, on the first calls)
        return await bytes_kept(lambda: lookups(0, 200), lambda: lookups(200, 4000))

    try:
        grown = asyncio.run(scenario())
    finally:
        catalog.close()
    assert grown < 100_000, f"4,000 calls from as many client processes kept {grown:,} bytes"


def test_a_publisher_taken_out_while_it_ran_comes_back_whole_with_its_ended_partitions(tmp_path):
    """Partition 0 of a two-partition publisher has ended; partition 1
    runs on, but its connection breaks and it does not answer in time (its
    kernel blocked): the coordinator takes the topic out. Partition 1's
    refresh brings it back, and with it partition 0's end: a subscriber
    finds it (it found the topic short of partition 0 and waited for it for
    ever, though partition 1 still published), and once partition 1 ends
    the topic has ended whole and leaves the catalog (it stayed listed)."""
    system = System(tmp_path)
    try:
        system.start_coordinator()
        address = (system.host, system.port)
        fields = {"name": "half", "id": "p1", "job": "app:half:1", "kind": "stream", "record_type": None,
                  "partitions": 2}
        addresses = [_dead_address(), _dead_address()]

        async def scenario():
            # (each of a publisher's kernels registers its partition on its own connection)
            async with Client(address, SECRET.encode()) as kernel0, \
                    Client(address, SECRET.encode()) as kernel1:
                for partition, kernel in enumerate((kernel0, kernel1)):
                    await kernel.request("topic_publish", **fields, partition=partition,
                                         address=addresses[partition])
                await kernel0.request("topic_unpublish", name="half", id="p1", partition=0)
                kernel1._session.ws._response.connection.transport.abort()
                await _until(lambda: not _listed(system, "half"), 8)  # (it did not answer: taken out)
            async with Client(address, SECRET.encode()) as kernel1:
                again = await kernel1.request("topic_publish", **fields, partition=1, address=addresses[1],
                                              refresh=True)
                found = await kernel1.request("topic_lookup", name="half", job="app:reader:1/r")
                await kernel1.request("topic_unpublish", name="half", id="p1", partition=1)
                return again, found

        again, found = asyncio.run(scenario())
        assert again == {"again": True}
        assert (found["found"], found.get("addresses")) == (True, ["ended", addresses[1]]), found
        assert not _listed(system, "half"), "a topic ended whole stayed listed"
    finally:
        system.close()


async def _until(condition, timeout: float) -> None:
    """Until `condition()` (run on a thread: it may ask the coordinator) holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(condition):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_a_publisher_killed_while_the_coordinator_was_down_leaves_the_catalog_once_it_is_back(tmp_path):
    """The coordinator is killed; a publishing app dies while it is down
    (here: a registration made on a connection, its address dead); the
    coordinator is started again on the same catalog. No connection of
    the dead publisher's will ever tie its registration to it (one that
    runs says it again within KERNEL_TOPIC_REFRESH seconds), so nothing
    asked whether it still published: it stayed listed for good, each
    subscriber dialling its dead address. Now the restarted coordinator
    asks every registration that no connection has said again, each
    refresh period from its start, as it asks a broken connection's: the
    dead one goes, an app that still publishes (a real readings.py, which
    answers at its address) stays, and goes once killed, though its refresh
    period is longer than the test (since session 39 it says its
    registration again on a new connection once its old one ends, which
    may come first: then the broken connection takes it out)."""
    import signal
    import subprocess

    system = System(tmp_path)
    alive = None
    try:
        system.start_coordinator()
        address = (system.host, system.port)
        env = dict(system.env, TOPIC="alive", COUNT="0", KERNEL_TOPIC_REFRESH="1000")
        with open(tmp_path / "alive.log", "wb") as err:
            alive = subprocess.Popen([sys.executable, str(Path(__file__).parent / "readings.py"),
                                      f"127.0.0.1:{system.port}"], stderr=err, stdout=subprocess.DEVNULL,
                                     env=env)
        wait_until(lambda: " served at " in (tmp_path / "alive.log").read_text() or alive.poll() is not None,
                   what="the live publisher to register")

        async def register() -> None:
            async with Client(address, SECRET.encode()) as client:
                await client.request("topic_publish", name="dead", id="d1", job="app:dead:1", kind="stream",
                                     record_type=None, partitions=1, partition=0, address=_dead_address())

        asyncio.run(register())  # (closed with a close frame: nothing checks it before the restart)
        system.coordinator.kill()
        system.coordinator.wait()
        system.start_coordinator(KERNEL_TOPIC_REFRESH="0.5")  # (asked each half second from its start)
        assert _listed(system, "dead")
        wait_until(lambda: not _listed(system, "dead"), timeout=8,
                   what="the registration of the publisher gone while the coordinator was down to go")
        log = system.coordinator_log.read_text()
        assert "topic 'dead': publisher d1 (app:dead:1) is gone" in log
        assert _listed(system, "alive") and alive.poll() is None
        # (killed once a check has found it still publishing: a later one takes it out)
        # (or it said its registration again on its own, on a new connection,
        # its old one ended: session 39, `Directory.say_again`; tied to it then)
        wait_until(lambda: "topic 'alive': publisher" in system.coordinator_log.read_text()
                   or "said its registration again" in (tmp_path / "alive.log").read_text(),
                   what="a check to keep the live publisher, or its registration said again")
        alive.send_signal(signal.SIGKILL)
        alive.wait()
        wait_until(lambda: not _listed(system, "alive"), timeout=8,
                   what="the publisher killed after the restart, before its refresh, to go")
    finally:
        if alive is not None:
            alive.kill()
            alive.wait()
        system.close()


def test_a_registration_reads_its_own_topic_again_not_every_topic(tmp_path):
    """After each call that may change the topics the catalog read the
    whole listing again (`status` answers from it): two queries a topic, so
    a system of 2,000 partitions took a minute of the catalog's thread to
    register them (the lookups queued behind). A call about one topic now
    reads that topic's entry alone: its statements do not grow with the
    topics registered."""
    from kernel.system._catalog import Catalog
    from kernel.system._topics import request

    catalog = Catalog(tmp_path / "data")

    def publish(i: int) -> dict:
        return {"name": f"t{i:04d}", "id": f"p{i}", "job": "app:many:1", "kind": "stream",
                "record_type": None, "partitions": 1, "partition": 0, "address": f"127.0.0.1:{1000 + i}"}

    async def scenario() -> list[str]:
        for i in range(300):
            await request(catalog, "topic_publish", publish(i))
        statements: list[str] = []
        catalog.at_once(catalog._db.set_trace_callback, statements.append)
        try:
            await request(catalog, "topic_publish", publish(300))
            await request(catalog, "topic_subscribe", {"name": "t0007", "job": "app:reader:1", "process": 0})
        finally:
            catalog.at_once(catalog._db.set_trace_callback, None)
        return statements

    try:
        statements = asyncio.run(scenario())
        assert catalog.listing == catalog.topics()
        assert [t["name"] for t in catalog.listing] == [f"t{i:04d}" for i in range(301)]
        assert next(t for t in catalog.listing if t["name"] == "t0007")["subscribers"] == ["app:reader:1"]
    finally:
        catalog.close()
    assert len(statements) < 40, f"{len(statements)} statements for a registration and a subscription"


_OPS = st.sampled_from(["publish", "unpublish", "subscribe", "unsubscribe", "lookup", "lost", "job ends"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(_OPS, st.sampled_from(["a", "b", "c"]), st.integers(0, 1), st.integers(0, 2)),
                max_size=25))
def test_the_status_listing_kept_topic_by_topic_equals_the_catalog_read_whole(steps):
    """Whatever the sequence of topic requests (two publishers taking
    names over, partitions ending, subscriptions, a publisher taken out as
    gone, a job's end), the listing `status` answers from, now read again
    one topic at a time, is the whole catalog's as read at once."""
    import tempfile

    from kernel.system._catalog import Catalog
    from kernel.system._topics import _forget_lost, request

    async def no_answer(address, kind):  # (every old publisher is gone: a new one takes its name over)
        return None

    async def scenario(catalog) -> None:
        for op, name, partition, who in steps:
            uid, job = f"p{who}", f"app:job{who}"
            m = {"name": name, "id": uid, "job": job, "kind": "stream", "record_type": None, "partitions": 2,
                 "partition": partition, "address": f"127.0.0.1:{9000 + 10 * who + partition}"}
            if op == "publish":
                await request(catalog, "topic_publish", m, no_answer)
            elif op == "unpublish":
                await request(catalog, "topic_unpublish", {"name": name, "id": uid, "partition": partition})
            elif op in ("subscribe", "unsubscribe"):
                await request(catalog, f"topic_{op}", {"name": name, "job": job, "process": partition})
            elif op == "lookup":
                await request(catalog, "topic_lookup", {"name": name, "job": job})
            elif op == "lost":
                await catalog.call(_forget_lost, catalog, name, uid, write=True, topics=name)
            else:
                await catalog.call(catalog.forget_topics_of, job, write=True, topics=True)
            assert catalog.listing == await catalog.call(catalog.topics), (op, name, partition, who)

    with tempfile.TemporaryDirectory() as folder:
        catalog = Catalog(Path(folder) / "data")
        try:
            asyncio.run(scenario(catalog))
        finally:
            catalog.close()


def test_a_coordinator_served_in_an_applications_loop_leaves_no_check_behind_once_stopped(
        tmp_path, monkeypatch, caplog):
    """The restarted coordinator's checks of registrations left from before
    (`forget_left_behind`, each refresh period for six) are its own: served
    in an application's loop and stopped, it asked its closed catalog on,
    a warning each period, for a minute after it had stopped."""
    import logging

    monkeypatch.setenv("KERNEL_TOPIC_REFRESH", "0.05")

    def served(then):
        return served_coordinator(tmp_path / "data", then)

    async def register(address) -> None:
        async with Client(address, SECRET.encode()) as client:
            await client.request("topic_publish", name="dead", id="d1", job="app:dead:1", kind="stream",
                                 record_type=None, partitions=1, partition=0, address=_dead_address())

    async def nothing(address) -> None:
        pass

    async def scenario() -> list:
        await served(register)
        await served(nothing)  # (started again, stopped before its first check)
        await asyncio.sleep(0.25)  # (five of its periods: it asked at each)
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    with caplog.at_level(logging.WARNING, logger="kernel.system"):
        left = asyncio.run(scenario())
    assert left == [], left
    assert not [r for r in caplog.records if "could not check" in r.getMessage()], caplog.text
