"""A review of the coordinator's catalog calls against a catalog that another
program holds (an operator's `sqlite3 catalog.sqlite` with a write
transaction open, a backup): each test runs a real coordinator (and
executor) process and holds the lock from another process.

What a demanding user expects, and what these tests hold the coordinator to:
* nothing that does not need the catalog waits for it: `status`, `job`,
  `wait`, the dashboard and executors' heartbeats are answered at once, so no
  executor is taken for lost and no job restarts because of the lock;
* a request that must be on disk to count (`submit`, `kill`) waits for the
  lock, up to the coordinator's --catalog-timeout (10 s by default), and
  then succeeds as if nothing had happened;
* past that timeout it fails with a message naming the catalog's file and
  the process that holds it, and the same request sent again once the lock
  is gone succeeds."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from _system import SECRET, System, wait_until
from test_system import NOOP, write

from kernel.system import Client
from kernel.system._client import pipeline_payload
from kernel.system._wire import RequestError

_HOLD = """\
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
db.execute("BEGIN EXCLUSIVE")
print("held", flush=True)
sys.stdin.read()  # until the test closes our stdin
db.execute("ROLLBACK")
"""


def _hold(system: System) -> subprocess.Popen:
    """Another process holding the catalog's write lock, until its stdin is closed."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(system.root / "data" / "catalog.sqlite")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    return holder


def _release(holder: subprocess.Popen) -> None:
    holder.stdin.close()
    assert holder.wait(timeout=5) == 0


async def _status_while(asker: Client, seconds: float, latencies: list[float], states: list[dict]) -> None:
    """Ask `status` every 0.1 s for `seconds`, noting how long each answer took."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        asked = loop.time()
        states.append(await asker.request("status", timeout=5))
        latencies.append(loop.time() - asked)
        await asyncio.sleep(0.1)


def test_a_locked_catalog_holds_a_submit_but_neither_status_nor_the_executors(tmp_path):
    # The lock is held for 3 s: longer than the executors' timeout (2 s here).
    # Before: every catalog call ran on the coordinator's event loop, so the
    # submit's write stalled the whole coordinator for SQLite's busy timeout
    # (1 s: no status answered, no heartbeat read) and then failed with
    # "database is locked" while the lock was still held.
    system = System(tmp_path)
    try:
        system.start_coordinator()
        system.start_executor(1)
        system.executors_up(1)
        payload = pipeline_payload(str(write(tmp_path / "noop.py", NOOP)))
        address = (system.host, system.port)

        async def scenario():
            async with Client(address, SECRET.encode()) as submitter, \
                    Client(address, SECRET.encode()) as asker:
                holder = _hold(system)
                try:
                    submit = asyncio.ensure_future(submitter.request("submit", **payload, request="r1"))
                    latencies, states = [], []
                    await _status_while(asker, 3.0, latencies, states)
                    held_through = not submit.done()
                finally:
                    _release(holder)
                reply = await asyncio.wait_for(submit, 5)
                return latencies, states, held_through, reply

        latencies, states, held_through, reply = asyncio.run(scenario())
        # (the bug froze the coordinator's loop for SQLite's busy timeout, 1 s,
        # or until the lock went, 3 s; a loaded machine may delay a healthy
        # coordinator's answer a few hundred ms)
        assert max(latencies) < 1.0, f"status took {max(latencies):.2f} s while the catalog was locked"
        assert all([e["state"] for e in s["executors"]] == ["up"] for s in states), states
        assert held_through, "the submit was answered while the catalog was still locked"
        job = reply["job"]
        state = wait_until(lambda: (s := system.job(job))["status"] == "completed" and s, timeout=10,
                           what="the job submitted during the lock to complete")
        assert (state["restarts"], state["attempt"]) == (0, 1), state
        assert "silent for" not in system.coordinator_log.read_text()
    finally:
        system.close()


def test_a_lock_held_past_the_catalog_timeout_fails_the_request_naming_the_file_and_its_holder(tmp_path):
    system = System(tmp_path)
    try:
        system.start_coordinator("--catalog-timeout", "0.5")
        system.start_executor(1)
        system.executors_up(1)
        payload = pipeline_payload(str(write(tmp_path / "noop.py", NOOP)))
        address = (system.host, system.port)
        catalog = system.root / "data" / "catalog.sqlite"

        async def scenario():
            async with Client(address, SECRET.encode()) as client:
                holder = _hold(system)
                try:
                    asked = time.monotonic()
                    try:
                        await client.request("submit", **payload, request="r1")
                        refused = None
                    except RequestError as exc:
                        refused = str(exc)
                    waited = time.monotonic() - asked
                    status = await client.request("status", timeout=5)
                finally:
                    _release(holder)
                again = await client.request("submit", **payload, request="r1")  # the user's retry
                return holder.pid, refused, waited, status, again

        pid, refused, waited, status, again = asyncio.run(scenario())
        assert refused is not None, "the submit succeeded while the catalog was locked"
        assert str(catalog) in refused and "database is locked" in refused, refused
        assert f"pid {pid} " in refused, f"the holder (pid {pid}) is not named: {refused}"
        assert 0.5 <= waited < 2.0, f"refused after {waited:.2f} s, for a timeout of 0.5 s"
        assert status["jobs"] == []
        assert again["job"] == "job-1"
    finally:
        system.close()


def test_a_submit_sent_twice_while_the_catalog_is_locked_makes_one_job(tmp_path):
    # A client whose connection was lost sends its submit again under the same
    # request id. With the first one still waiting for the catalog (its job
    # not yet in the job master's memory), the second must find it, not make
    # a second job.
    system = System(tmp_path)
    try:
        system.start_coordinator()
        system.start_executor(1)
        system.executors_up(1)
        payload = pipeline_payload(str(write(tmp_path / "noop.py", NOOP)))
        address = (system.host, system.port)

        async def scenario():
            async with Client(address, SECRET.encode()) as first, Client(address, SECRET.encode()) as second:
                holder = _hold(system)
                try:
                    one = asyncio.ensure_future(first.request("submit", **payload, request="same"))
                    await first.request("status", timeout=5)  # (the first submit has arrived)
                    two = asyncio.ensure_future(second.request("submit", **payload, request="same"))
                    await second.request("status", timeout=5)
                finally:
                    _release(holder)
                return await asyncio.wait_for(asyncio.gather(one, two), 5)

        one, two = asyncio.run(scenario())
        assert one == two == {"job": "job-1"}, (one, two)
        assert [j["id"] for j in system.status()["jobs"]] == ["job-1"]
    finally:
        system.close()
