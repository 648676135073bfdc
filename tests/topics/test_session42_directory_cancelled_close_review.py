"""Session 42 review: a Directory's `close` and `abandon` cut short by a
cancel at their first await (the loop's end cancels every task once more,
`stop_serving`) still close the connection's aiohttp session, and an
abandon still breaks the connection, so that the coordinator takes a
failed publisher's registration out.

test_session42_failed_publisher_closed guards `stop_serving` only: with
`close`'s and `_disconnect`'s try/finally, or `abandon`'s socket shut before
any await, taken back, it still passed. Here each is cancelled at its first
await (`_quiet`'s wait for the idle reader it stops).

A coordinator served in the test's loop; the registration's address is a
dead port, so that the coordinator, seeing the connection break, finds the
publisher gone (`kernel.system._topics.forget_lost`)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import SECRET, served_coordinator

from kernel.topics._directory import Directory

REGISTRATION = {"name": "failing", "id": "p1", "job": "app:x", "kind": "stream", "partitions": 1,
                "partition": 0, "address": "127.0.0.1:1"}


async def cut_short(step) -> None:
    """`step()` run until its first await, then cancelled (as asyncio.run's end does)."""
    task = asyncio.ensure_future(step())
    await asyncio.sleep(0)  # (to its first await: `_quiet` waiting for the idle reader's end)
    assert not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_a_close_cancelled_at_its_first_await_still_closes_the_aiohttp_session(tmp_path):
    async def scenario(address) -> None:
        directory = Directory(address, SECRET.encode())
        await directory.request("topic_lookup", name="any", job="app:x")
        http, ws = directory._http, directory._ws
        await cut_short(directory.close)
        assert http.closed and ws.closed and directory._http is None

    asyncio.run(served_coordinator(tmp_path / "data", scenario))


def test_an_abandon_cancelled_at_its_first_await_still_breaks_the_connection(tmp_path):
    async def scenario(address) -> None:
        directory, other = Directory(address, SECRET.encode()), Directory(address, SECRET.encode())
        try:
            await directory.request("topic_publish", **REGISTRATION)
            assert (await other.request("topic_lookup", name="failing", job="app:y"))["found"]
            http = directory._http
            await cut_short(directory.abandon)
            # broken, not closed with a frame: the coordinator asks the dead address, and
            # takes the registration out (closed with a frame, it stayed listed for good)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while (await other.request("topic_lookup", name="failing", job="app:y"))["found"]:
                assert loop.time() < deadline, "the abandoned registration stayed listed"
                await asyncio.sleep(0.05)
            assert http.closed
        finally:
            await other.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
