"""Session 38: the jobs that had found a stream topic (`_topics._readers`:
its subscribers find it ended once it has) are remembered while they have
a connection to the coordinator open, and READER_GRACE seconds after:
one entry per app run, kept for the topic's whole life, grew a coordinator
whose long-lived topic short-lived apps (notebooks, dashboards) subscribe
to again and again without bound."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, bytes_kept, served_coordinator

from kernel.system import Client, _topics

_STREAM = {"name": "readings", "id": "p1", "job": "app:publisher:1", "kind": "stream", "record_type": None,
           "partitions": 1, "partition": 0, "address": "127.0.0.1:9"}


def test_the_readers_of_app_runs_gone_for_the_grace_are_not_kept(tmp_path, monkeypatch):
    """Many app runs each look the topic up on a connection of their own,
    which then closes: past the grace, what they leave behind does not grow
    with their number (150 bytes a run, for as long as the topic lived: 75,000 here)."""
    from kernel.system._catalog import Catalog

    monkeypatch.setattr(_topics, "READER_GRACE", 0.0)
    catalog = Catalog(tmp_path / "data")

    async def runs(first: int, count: int) -> None:
        for i in range(first, first + count):
            reading = _topics.Reading()  # (a connection of the run's own)
            found = await _topics.request(catalog, "topic_lookup", {"name": "readings",
                                                                    "job": f"app:nb:{i}/{i:032x}"},
                                          reading=reading)
            assert found["found"]
            _topics.readers_left(catalog, reading)
        await catalog.call(lambda: None)  # (after the last `readers_left`'s call)

    async def scenario() -> int:
        await _topics.request(catalog, "topic_publish", _STREAM)
        return await bytes_kept(lambda: runs(0, 100), lambda: runs(100, 500))

    try:
        grown = asyncio.run(scenario())
    finally:
        catalog.close()
    assert grown < 30_000, f"500 app runs gone kept {grown:,} bytes"


def test_a_reader_is_forgotten_only_once_its_connections_are_closed_for_the_grace(tmp_path, monkeypatch):
    """A real coordinator (served in this loop, the grace set here). A
    reader whose connection closed and that looks the topic up again within
    the grace (its next kernel, a connection opened again) finds it ended;
    past the grace it is forgotten (it waits for a new publisher, as a new
    run does); one whose connection is still open is never forgotten."""
    monkeypatch.setattr(_topics, "READER_GRACE", 60.0)

    async def lookup(address, reader: str) -> dict:
        async with Client(address, SECRET.encode()) as client:
            return await client.request("topic_lookup", name="readings", job=reader)

    async def scenario(address) -> None:
        async with Client(address, SECRET.encode()) as publisher, Client(address, SECRET.encode()) as still:
            await publisher.request("topic_publish", **_STREAM)
            assert (await lookup(address, "app:gone:1/r"))["found"]
            assert (await still.request("topic_lookup", name="readings", job="app:still:1/r"))["found"]
            await publisher.request("topic_unpublish", name="readings", id="p1", partition=0)
            again = await lookup(address, "app:gone:1/r")  # (within the grace: it finds the end)
            assert (again["found"], again["addresses"]) == (True, ["ended"]), again
            monkeypatch.setattr(_topics, "READER_GRACE", 0.0)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            for i in range(10_000):
                await lookup(address, f"app:other:{i}/r")  # (another connection: the gone ones are swept)
                if not (await lookup(address, "app:gone:1/r"))["found"]:
                    break
                assert loop.time() < deadline, "a reader gone for the grace was still remembered"
            found = await still.request("topic_lookup", name="readings", job="app:still:1/r")
            assert (found["found"], found["addresses"]) == (True, ["ended"]), found

    asyncio.run(served_coordinator(tmp_path / "data", scenario))


def test_a_lookup_whose_job_is_no_name_is_refused_saying_so(tmp_path):
    """A hand-made client's lookup with a `job` that is no str (a dict): it
    failed in the set of readers ("malformed 'topic_lookup' request:
    TypeError: unhashable type: 'dict'"); now a refusal that says what a
    job is, and the coordinator goes on."""
    async def scenario(address) -> str:
        async with Client(address, SECRET.encode()) as client:
            await client.request("topic_publish", **_STREAM)
            try:
                await client.request("topic_lookup", name="readings", job={"a": 1})
            except Exception as exc:  # (what the client raises is the check)
                refusal = str(exc)
            else:
                refusal = "accepted"
            found = await client.request("topic_lookup", name="readings", job="app:fine:1/r")
            assert found["found"], found  # (the coordinator goes on)
            return refusal

    refusal = asyncio.run(served_coordinator(tmp_path / "data", scenario))
    assert "a topic lookup's job is a name (a str), got dict" in refusal, refusal
    assert "internal error" not in refusal
