"""A publisher that is gone without ending its topic (an app SIGKILLed)
leaves the coordinator's catalog: a subscriber looking the topic
up waits for the next publisher instead of dialling a dead address, and
`status` no longer lists it. A publisher that still runs stays listed
when its connection to the coordinator breaks.

Real processes and sockets: the module's coordinator, readings.py and
sums.py (test_topics' helpers), services run as an app or in this loop."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import pytest
from test_services_robust import run, serving, where  # noqa: F401  (fixtures and helpers)
from test_topics import (  # noqa: F401  (fixtures, and what kills the jobs a test started)
    PYTHON,
    SERVICE,
    SHORT_EPOCH,
    Job,
    _no_job_left,
    coordinator,
    own_system,
    results,
    starts,
    system,
    topics_named,
    wait_until,
)

import kernel.services
from kernel.topics import ServiceError
from kernel.topics._directory import Directory, job_name, new_id


@pytest.mark.parametrize("cores", [1, 2])
def test_a_killed_publishing_app_leaves_the_catalog_and_a_new_subscriber_waits_for_the_next(system, cores):  # noqa: F811
    a = Job(system, "readings.py", "a", COUNT=0, CORES=cores)
    wait_until(lambda: a.text().count(" served at ") == cores, what="A to register every partition")
    assert len(topics_named(system, system.topic)) == 1
    a.kill()
    wait_until(lambda: not topics_named(system, system.topic), timeout=10,
               what="the killed app's topic to leave the catalog")
    # a subscriber now waits for a publisher (it found A's dead address and
    # ended with PublisherLost): not found within its timeout...
    late = Job(system, "sums.py", "late", TIMEOUT=0.5)
    lines = late.finish()
    assert late.proc.returncode == 3
    expected = (f"TopicError: no topic {system.topic!r} was published within 0.5 s (is the publishing job "
                "running, with the same coordinator?)")
    assert lines[-1]["error"].endswith(expected), lines[-1]
    # ... and reads the next publisher whole
    b = Job(system, "sums.py", "b")
    waiting = f"waiting for '{system.topic}' to be published"
    wait_until(lambda: waiting in b.text() or b.proc.poll() is not None, what="B to wait for the topic")
    go = system.root / "go"
    a2 = Job(system, "readings.py", "a2", COUNT=1000, WAIT=go, GO=go)  # (at full speed once B reads it)
    wait_until(lambda: starts(b)[0] or b.proc.poll() is not None, what="B to connect to A2")
    go.touch()
    seqs, _ = results(b)
    assert seqs == list(range(1000)), b.text()[-2000:]
    assert a2.finish()[-1].startswith("ended")


def test_a_killed_serving_app_leaves_the_catalog_and_a_call_waits_for_the_next_server(system, monkeypatch):  # noqa: F811
    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    at = f"127.0.0.1:{system.port}"
    script = system.root / "service.py"
    script.write_text(SERVICE)

    def start_server(name: str) -> subprocess.Popen:
        with open(system.root / f"{name}.log", "wb") as err:
            return subprocess.Popen([PYTHON, str(script), at], stderr=err, stdout=subprocess.DEVNULL,
                                    env=system.env, cwd=system.root)

    server = start_server("server1")
    try:
        wait_until(lambda: {"square", "config"} <= {t["name"] for t in system.status()["topics"]},
                   what="the services to register")
        assert kernel.services.call("square", 4, coordinator=at) == {"n": 4, "square": 16}
        server.send_signal(signal.SIGKILL)
        server.wait()
        wait_until(lambda: not {"square", "config"} & {t["name"] for t in system.status()["topics"]},
                   timeout=10, what="the killed app's services to leave the catalog")
        # (it dialled the dead address until its timeout: "nothing answered at ...")
        with pytest.raises(ServiceError, match=r"^no service 'square' was published within 0\.5 s"):
            kernel.services.call("square", 4, coordinator=at, timeout=0.5)
        server = start_server("server2")
        assert kernel.services.call("square", 5, coordinator=at, timeout=30) == {"n": 5, "square": 25}
    finally:
        server.kill()
        server.wait()


def _coordinator_says(coordinator, text: str) -> int:  # noqa: F811
    return coordinator.coordinator_log.read_text(errors="replace").count(text)


async def _until(condition, timeout: float) -> None:
    """Until `condition()` (run on a thread: it may ask the coordinator) holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await asyncio.to_thread(condition):
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


def test_a_publisher_that_still_runs_stays_listed_when_a_connection_it_registered_on_breaks(
        coordinator, where):  # noqa: F811
    """The service registers itself (on a connection it keeps); a second
    connection registers it again (the same publisher id and address) and
    breaks (no close frame, as a reset): the coordinator asks the address,
    which answers as that publisher, and keeps it."""

    def topic(name: str) -> dict | None:
        return next((t for t in coordinator.status()["topics"] if t["name"] == name), None)

    async def scenario():
        async with serving(where, lambda request: request * 2) as service:
            name = service.name
            await _until(lambda: topic(name) is not None, timeout=10)
            [address] = (await asyncio.to_thread(topic, name))["publisher"]
            host, port = where.rsplit(":", 1)
            kept = f"topic {name!r}: the connection of publisher {new_id()} ({job_name()}) closed, but it " \
                "still publishes: kept"
            directory = Directory((host, int(port)), coordinator.env["KERNEL_SECRET"].encode())
            await directory.request("topic_publish", name=name, id=new_id(), job=job_name(), kind="service",
                                    record_type=None, partitions=1, partition=0, address=address)
            directory._ws._response.connection.transport.abort()
            await directory.close()
            await _until(lambda: _coordinator_says(coordinator, kept) == 1, timeout=15)
            assert (await asyncio.to_thread(topic, name))["publisher"] == [address]
            async with kernel.services.connect(name, coordinator=where, timeout=10) as client:
                assert await client.call(21) == 42

    run(scenario)


def test_a_publisher_killed_after_a_coordinator_restart_leaves_the_catalog_too(own_system):  # noqa: F811
    """The coordinator is killed and started again (same --data: the topic
    is still registered), with no connection of the publisher's: it says
    its registration again (KERNEL_TOPIC_REFRESH seconds), on a new
    connection; killed then, it is noticed as before the restart (it stayed
    listed until a publisher of the name took it over)."""
    system = own_system  # noqa: F811
    a = Job(system, "readings.py", "a", COUNT=0, KERNEL_TOPIC_REFRESH=0.2)
    a.wait_published()
    system.coordinator.kill()
    system.coordinator.wait()
    system.start_coordinator()
    wait_until(lambda: system.coordinator_log.read_text().count("coordinator listening") == 2,
               what="the coordinator to listen again")
    assert len(topics_named(system, system.topic)) == 1  # (kept in its catalog)
    try:
        wait_until(lambda: "registered again with the coordinator" in a.text(), timeout=10,
                   what="A to register again")
    except AssertionError:
        pass  # (killed anyway: what the catalog does then is the test)
    a.kill()
    try:
        wait_until(lambda: not topics_named(system, system.topic), timeout=10, what="A's topic to go")
    except AssertionError:
        pass
    assert topics_named(system, system.topic) == [], a.text()[-1500:]


def test_a_refresh_never_takes_a_name_over_nor_opens_an_ended_partition_again(where):  # noqa: F811
    host, port = where.rsplit(":", 1)
    name = f"refresh-{new_id()}"
    fields = {"name": name, "kind": "stream", "record_type": None, "partitions": 2}

    async def scenario():
        one = Directory((host, int(port)), _secret())
        two = Directory((host, int(port)), _secret())
        try:
            for partition in (0, 1):
                await one.request("topic_publish", **fields, id="one", job="app:one", partition=partition,
                                  address=f"127.0.0.1:{9 + partition}")
            refused = await two.request("topic_publish", **fields, id="two", job="app:two", partition=0,
                                        address="127.0.0.1:11", refresh=True)
            await one.request("topic_unpublish", name=name, id="one", partition=0)
            kept = await one.request("topic_publish", **fields, id="one", job="app:one", partition=0,
                                     address="127.0.0.1:9", refresh=True)
            said = await one.request("topic_publish", **fields, id="one", job="app:one", partition=1,
                                     address="127.0.0.1:10", refresh=True)
            found = await one.request("topic_lookup", name=name, job="app:reader")
            return refused, kept, said, found
        finally:
            await one.close()
            await two.close()

    refused, kept, said, found = run(scenario)
    assert refused == {"taken": "app:one"}
    assert kept == said == {}
    assert (found["id"], found["job"], found["addresses"]) == ("one", "app:one", ["ended", "127.0.0.1:10"])


def _secret() -> bytes:
    import os

    return os.environ["KERNEL_SECRET"].encode()


def test_a_service_stopped_while_its_refresh_waits_leaves_no_request_running(own_system, monkeypatch):  # noqa: F811
    """The coordinator is frozen (SIGSTOP) while a service's refresh waits
    for its answer, and the service is stopped (its job ends): the refresh
    goes with it, no request left running on its own after the connection
    is closed (nor an exception nobody retrieves)."""
    import os

    system = own_system  # noqa: F811
    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    monkeypatch.setenv("KERNEL_TOPIC_REFRESH", "0.05")
    at = f"127.0.0.1:{system.port}"
    asked = []
    request = Directory.request

    async def noted(self, op, **fields):
        if fields.get("refresh"):
            asked.append(asyncio.current_task())
        return await request(self, op, **fields)

    monkeypatch.setattr(Directory, "request", noted)

    async def scenario():
        async with serving(at, lambda request: request) as service:
            await _until(lambda: any(t["name"] == service.name for t in system.status()["topics"]),
                         timeout=10)
            os.kill(system.coordinator.pid, signal.SIGSTOP)
            try:
                count = len(asked)
                while len(asked) == count:  # (a refresh sent to the frozen coordinator)
                    await asyncio.sleep(0.01)
                refreshing = asked[-1]
                await asyncio.sleep(0.05)
                assert not refreshing.done()
                service._task.cancel()  # (the service stops: its job ends)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 2
                while not refreshing.done() and loop.time() < deadline:
                    await asyncio.sleep(0.01)
                return refreshing.done(), refreshing.cancelled()
            finally:
                os.kill(system.coordinator.pid, signal.SIGCONT)

    assert run(scenario) == (True, True)


FAILING = """\
import os, sys
from kernel import Dataflow, Source, run

class Failing(Source):
    def open(self, context):
        self.n = 0
    def poll(self):
        self.n += 1
        if os.path.exists(sys.argv[3]):  # (once both are registered)
            raise RuntimeError("boom")
        self.context.kernel.call_later(0.02, self.wake)
        self.emit([self.n])
        return None

flow = Dataflow("failing")
flow.source(Failing, name="failing").publish(sys.argv[2])
flow.serve(sys.argv[2] + "-service", lambda request: request)
try:
    run(flow, coordinator=sys.argv[1])
except Exception as exc:
    print("failed:", type(exc).__name__, flush=True)
sys.stdin.read()  # (the app goes on, till the test closes its stdin)
"""


def test_an_app_whose_run_failed_and_goes_on_leaves_the_catalog(system):  # noqa: F811
    """An app's run fails (on one kernel: in the app's process) and the app
    goes on: its topic and its service are gone, and leave the catalog, as
    a killed app's do (it closed its coordinator connection with a close
    frame, and both stayed listed, their addresses dead)."""
    (system.root / "failing.py").write_text(FAILING)
    names = {system.topic, f"{system.topic}-service"}
    fail = system.root / "fail"
    app = subprocess.Popen([PYTHON, "failing.py", f"127.0.0.1:{system.port}", system.topic, str(fail)],
                           env=system.env, cwd=system.root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    try:
        wait_until(lambda: names <= {t["name"] for t in system.status()["topics"]} or app.poll() is not None,
                   what="the topic and the service to be registered")
        fail.touch()
        assert app.stdout.readline() == "failed: OperatorError\n"
        wait_until(lambda: not names & {t["name"] for t in system.status()["topics"]}, timeout=10,
                   what="the failed app's topic and service to leave the catalog")
        assert app.poll() is None  # (still running)
    finally:
        app.kill()
        app.wait()
        app.stdin.close()
        app.stdout.close()


def test_a_waiting_subscriber_stops_dialling_a_killed_publishers_address_taken_by_another_program(system):  # noqa: F811
    """A is stopped (SIGSTOP): B (on_lost="wait") finds it silent but
    registered, and keeps trying it (README, topics item 4). A is then
    killed, and another program listens on its port at once, accepting
    connections and answering none. B dialled that address for ever (the
    catalog listed A until another publisher took the name); now the
    coordinator sees A gone, B finds it no longer listed, waits for a new
    publisher, and reads A2 whole."""
    import re
    import socket

    from test_topics import HEARTBEAT

    a = Job(system, "readings.py", "a", COUNT=0, KERNEL_HEARTBEAT=HEARTBEAT, EPOCH=SHORT_EPOCH)
    a.wait_published()
    port = int(re.search(r" served at 127\.0\.0\.1:(\d+)", a.text()).group(1))
    b = Job(system, "sums.py", "b", ON_LOST="wait", KERNEL_HEARTBEAT=HEARTBEAT,
            KERNEL_TOPIC_CONNECT_TIMEOUT=1)
    wait_until(lambda: b.epochs_received() >= 2, what="B to read whole epochs of A")
    a.proc.send_signal(signal.SIGSTOP)
    wait_until(lambda: "does not answer at" in b.text(), timeout=30, what="B to find A silent")
    squatter = socket.socket()
    try:
        a.kill()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen(64)
        wait_until(lambda: f"waiting for '{system.topic}' (a new publisher)" in b.text(), timeout=20,
                   what="B to wait for a new publisher")
        go = system.root / "go"
        a2 = Job(system, "readings.py", "a2", COUNT=500, START=100_000, WAIT=go, GO=go)
        wait_until(lambda: len(starts(b)[0]) >= 2 or b.proc.poll() is not None, what="B to read A2")
        go.touch()
        seqs, _ = results(b)
        assert [s for s in seqs if s >= 100_000] == list(range(100_000, 100_500)), b.text()[-2000:]
        assert a2.finish()[-1].startswith("ended")
    finally:
        squatter.close()


class _Held:
    """A registration made on a connection of its own (in a loop on a
    thread), kept open until `abandon()` breaks it as a killed publisher's
    breaks, or `close()`."""

    def __init__(self, system, **fields) -> None:  # noqa: F811
        import threading

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.directory = Directory(("127.0.0.1", system.port), system.env["KERNEL_SECRET"].encode())
        self._do(self.directory.request("topic_publish", **fields))

    def _do(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def abandon(self) -> None:
        self._do(self.directory.abandon())

    def close(self) -> None:
        self._do(self.directory.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_a_subscriber_that_found_a_publisher_gone_before_it_came_waits_for_the_topic(system):  # noqa: F811
    """B (on_lost="fail") looks the topic up while the catalog still lists
    a publisher that is gone (its registration held here, its address
    dead), and dials it; the publisher's connection then breaks and the
    coordinator takes it out. B had received nothing of it: it ended with
    PublisherLost; it now waits for the topic, within its timeout, and
    reads the next publisher whole."""
    from test_topics import free_port

    held = _Held(system, name=system.topic, id="gone-before", job="app:gone-before", kind="stream",
                 record_type=None, partitions=1, partition=0, address=f"127.0.0.1:{free_port()}")
    try:
        b = Job(system, "sums.py", "b", TIMEOUT=30, KERNEL_TOPIC_CONNECT_TIMEOUT=2)
        # (subscribed: it found the registration, and dials its address, for 0.5 + 2 s)
        wait_until(lambda: any(t["subscribers"] for t in topics_named(system, system.topic)),
                   what="B to find the dead registration")
        held.abandon()
        wait_until(lambda: "waiting for the topic to be published" in b.text() or b.proc.poll() is not None,
                   what="B to wait for the topic")
        assert b.proc.poll() is None, b.out.read_text()[-600:]
        go = system.root / "go"
        a = Job(system, "readings.py", "a", COUNT=1000, WAIT=go, GO=go)  # (at full speed once B reads it)
        wait_until(lambda: starts(b)[0] or b.proc.poll() is not None, what="B to connect to A")
        go.touch()
        seqs, _ = results(b)
        assert seqs == list(range(1000)), b.text()[-2000:]
        assert a.finish()[-1].startswith("ended")
    finally:
        held.close()
