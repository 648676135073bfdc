"""Review of service topics, three leftovers of the last review: calls past
the in-flight limit (they failed, rather than waiting for a slot), a peer
gone without a reset (nothing noticed it: no heartbeat), and a registered
address now served with another secret (the client failed at once rather
than looking the service up again). Each test fails on the code reviewed
but those marked "(guard)", seen failing with the fix broken.

Real servers (`Serve`'s, registered with a real coordinator process) in the
test's loop or as a job process, and real client processes, by the helpers
of test_services_robust."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys

import pytest
from kernel.net._links import AuthenticatedServer, AuthenticationFailed
from test_services_robust import job, run, serving, until, where  # noqa: F401  (fixtures, helpers)
from test_topics import coordinator, system  # noqa: F401  (fixtures)

import kernel.topics._services as services
from kernel.topics import ServiceError
from kernel.topics._directory import Directory
from kernel.topics._services import SERVICE_PATH, Serve, ServiceClient

_names = itertools.count(1)


# -- 1. calls past the in-flight limit wait for a slot --------------------------------------------------


def test_calls_past_the_in_flight_limit_wait_for_a_slot_and_succeed(where, monkeypatch):  # noqa: F811
    """20 calls pipelined where 8 may await their replies at once: the 12
    past the limit failed at once ("8 calls already wait for their replies
    on this connection"); they wait on the client, unsent, and succeed."""
    monkeypatch.setattr(services, "_MAX_IN_FLIGHT", 8)

    async def scenario():
        release = asyncio.Event()
        arrived = []

        async def handler(request):
            arrived.append(request)
            await release.wait()
            return request * 10

        async with serving(where, handler) as service:
            async with ServiceClient(service.name, coordinator=where, timeout=5) as svc:
                calls = [asyncio.ensure_future(svc.call(n)) for n in range(20)]
                await until(lambda: len(arrived) == 8)
                await asyncio.sleep(0.05)  # (time for a 9th request to arrive, were it sent)
                assert arrived == list(range(8))
                release.set()
                assert await asyncio.wait_for(asyncio.gather(*calls), 4) == [n * 10 for n in range(20)]
                assert sorted(arrived) == list(range(20))

    run(scenario)


async def _has_slots(svc: ServiceClient, held: list, release: asyncio.Event, n: int) -> None:
    """Exactly `n` calls of `svc` reach the server at once: n + 1 calls
    "hold" (answered once `release` is set), of which n arrive (`held`)
    and the last waits for a slot; then all are answered. Fewer arriving: a
    slot leaked; n + 1: one was given back twice."""
    held.clear()
    release.clear()
    calls = [asyncio.ensure_future(svc.call(f"hold{k}")) for k in range(n + 1)]
    await until(lambda: len(held) == n)
    await asyncio.sleep(0.05)
    assert len(held) == n
    release.set()
    assert await asyncio.wait_for(asyncio.gather(*calls), 4) == [f"hold{k}" for k in range(n + 1)]


def test_slots_come_back_after_timeouts_and_cancellations(where, monkeypatch):  # noqa: F811
    """4 slots: 8 calls the service never answers all fail at their own
    timeout (the 4 that waited for a slot too, not later); calls cancelled
    by their callers, in flight or waiting for a slot, give theirs back;
    after each, exactly 4 calls reach the server at once again."""
    monkeypatch.setattr(services, "_MAX_IN_FLIGHT", 4)

    async def scenario():
        hanging, held, release = set(), [], asyncio.Event()

        async def handler(request):
            if request.startswith("hold"):
                held.append(request)
                await release.wait()
            elif request.startswith("hang"):
                hanging.add(request)
                try:
                    await asyncio.Event().wait()
                finally:
                    hanging.discard(request)
            return request

        async with serving(where, handler) as service:
            async with ServiceClient(service.name, coordinator=where, timeout=0.5) as svc:
                loop = asyncio.get_running_loop()
                started = loop.time()
                outcomes = await asyncio.gather(*(svc.call(f"hang{n}") for n in range(8)),
                                                return_exceptions=True)
                took = loop.time() - started
                assert [str(o) for o in outcomes] == [
                    f"service '{service.name}' did not answer within 0.5 s"] * 8
                assert 0.45 <= took < 1.2, took
                await until(lambda: not hanging)
                await _has_slots(svc, held, release, 4)

                calls = [asyncio.ensure_future(svc.call(f"hang-c{n}")) for n in range(6)]
                await until(lambda: len(hanging) == 4)  # 4 in flight, 2 waiting for a slot
                for call in calls:
                    call.cancel()
                await asyncio.gather(*calls, return_exceptions=True)
                await until(lambda: not hanging)
                await _has_slots(svc, held, release, 4)

    run(scenario)


def test_calls_waiting_for_a_slot_fail_when_the_connection_drops(job, where, monkeypatch):  # noqa: F811
    """(Guard.) The serving job is killed while 4 calls await their
    replies and 2 more wait for a slot: all 6 fail at once, none waits
    for its timeout, and the next call fails as the connection is closed."""
    server, name = job
    monkeypatch.setattr(services, "_MAX_IN_FLIGHT", 4)  # (this client's; the job's server has its own)

    async def scenario():
        async with ServiceClient(name, coordinator=where, timeout=8) as svc:
            assert await svc.call("before") == "before"
            calls = [asyncio.ensure_future(svc.call("hang")) for _ in range(6)]
            await asyncio.sleep(0.05)
            server.kill()
            outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 4)
            for outcome in outcomes:
                assert isinstance(outcome, ServiceError), outcome
                assert str(outcome).startswith(f"service '{name}': the connection"), outcome
            with pytest.raises(ServiceError, match=rf"service '{name}': the connection is closed"):
                await svc.call("after")

    run(scenario)


# -- 2. a heartbeat: a peer gone without a reset is noticed --------------------------------------------

CLIENT = """\
import asyncio, sys
from kernel.topics._services import ServiceClient

async def main():
    async with ServiceClient(sys.argv[2], coordinator=sys.argv[1], timeout=None) as svc:
        await svc.call("hang")

asyncio.run(main())
"""


def test_a_frozen_client_is_dropped_and_its_handlers_cancelled(system, where, monkeypatch):  # noqa: F811
    """A client process stopped (SIGSTOP: its machine gone, a cable cut;
    its kernel still acknowledges what is sent, no reset comes) while its
    call waits: the server kept the call's handler awaiting for ever. With
    a heartbeat of 0.3 s it is cancelled within 1.5 heartbeats of the
    client's last word (here, < 1.5 s)."""
    monkeypatch.setattr(services, "_HEARTBEAT", 0.3, raising=False)

    async def scenario():
        hanging = set()

        async def handler(request):
            hanging.add(request)
            try:
                await asyncio.Event().wait()
            finally:
                hanging.discard(request)

        async with serving(where, handler) as service:
            (system.root / "client.py").write_text(CLIENT)
            client = subprocess.Popen([sys.executable, "client.py", where, service.name], env=system.env,
                                      cwd=system.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                await until(lambda: hanging, timeout=8)
                client.send_signal(signal.SIGSTOP)
                loop = asyncio.get_running_loop()
                stopped = loop.time()
                with contextlib.suppress(AssertionError):  # (`until`'s "timed out")
                    await until(lambda: not hanging, timeout=3)
                assert not hanging, "the frozen client's call is still awaited on the server"
                assert loop.time() - stopped < 1.5
            finally:
                client.kill()
                client.send_signal(signal.SIGCONT)
                client.wait()

    run(scenario)


def test_a_frozen_server_fails_the_calls_of_a_client_without_timeout(job, where, monkeypatch):  # noqa: F811
    """The serving job stopped (SIGSTOP) while a call without a timeout
    waits: it waited for ever. With a heartbeat of 0.3 s the client drops
    the connection within 1.5 heartbeats: the call fails as the connection
    closed, and so does the next."""
    server, name = job
    monkeypatch.setattr(services, "_HEARTBEAT", 0.3, raising=False)

    async def scenario():
        loop = asyncio.get_running_loop()
        async with ServiceClient(name, coordinator=where, timeout=None) as svc:
            assert await svc.call("before") == "before"
            pending = asyncio.ensure_future(svc.call("hang"))
            server.send_signal(signal.SIGSTOP)
            stopped = loop.time()
            try:
                with pytest.raises(ServiceError, match=rf"^service '{name}': the connection closed "
                                                       r"\(No PONG received after 0\.15 seconds\)$"):
                    await asyncio.wait_for(pending, 3)
                assert loop.time() - stopped < 1.5
                with pytest.raises(ServiceError, match=rf"service '{name}': the connection is closed"):
                    await svc.call("after")
            finally:
                server.send_signal(signal.SIGCONT)

    run(scenario)


def test_a_quiet_connection_between_live_ends_outlasts_many_heartbeats(where, monkeypatch):  # noqa: F811
    """(Guard.) Both ends alive, nothing to say for ~3 heartbeats (a call
    whose handler takes its time): the pings are answered and nobody drops
    the connection."""
    monkeypatch.setattr(services, "_HEARTBEAT", 0.1, raising=False)

    async def scenario():
        release = asyncio.Event()

        async def handler(request):
            await release.wait()
            return request

        async with serving(where, handler) as service:
            async with ServiceClient(service.name, coordinator=where, timeout=None) as svc:
                pending = asyncio.ensure_future(svc.call("slow"))
                done, _ = await asyncio.wait([pending], timeout=0.29)
                assert not done
                release.set()
                assert await asyncio.wait_for(pending, 4) == "slow"
                assert await svc.call("after") == "after"

    run(scenario)


# -- 3. a registered address served with another secret ------------------------------------------------


class Foreign(AuthenticatedServer):
    """A service server of another system (another secret) on the port a
    killed app had registered: it refuses our clients' secret."""

    noun = "a service client"
    path = SERVICE_PATH

    def __init__(self, name: str) -> None:
        super().__init__("127.0.0.1", 0, b"another system's secret", 0,
                         meta={"service": name, "id": "foreign"})

    async def _session(self, ws, peer, meta, address):
        async for _ in ws:
            pass

    def refused_a_secret(self) -> bool:
        return any(isinstance(failure, AuthenticationFailed) for failure in self.failures)


@contextlib.asynccontextmanager
async def stale_registration(coordinator_at: str):
    """Service NAME registered (by an app since killed) at an address where
    another system's service server now listens: yields (NAME, that server)."""
    name = f"moved-{next(_names)}-{os.getpid()}"
    foreign = Foreign(name)
    await foreign.start()
    host, _, port = coordinator_at.rpartition(":")
    directory = Directory((host, int(port)), os.environ["KERNEL_SECRET"].encode())
    try:
        await directory.request("topic_publish", name=name, id="killed-app", job="app:elsewhere:1",
                                kind="service", record_type=None, partitions=1, partition=0,
                                address=f"127.0.0.1:{foreign.port}")
        await directory.close()
        yield name, foreign
    finally:
        await directory.close()
        await foreign.stop()


def test_a_service_restarted_elsewhere_is_found_past_an_address_that_refuses_the_secret(where):  # noqa: F811
    """The catalog still gives the killed app's address, where another
    system's server refuses the client's secret: the client failed at once
    (AuthenticationFailed). It looks the service up again; the service,
    restarted elsewhere under its name (replacing the old registration:
    the coordinator's probe is refused there too), is found and answers."""

    async def scenario():
        async with stale_registration(where) as (name, foreign):
            connecting = asyncio.ensure_future(ServiceClient(name, coordinator=where, timeout=6).__aenter__())
            await until(foreign.refused_a_secret)
            restarted = asyncio.ensure_future(
                Serve(name, lambda request: {"echo": request}, coordinator=lambda: where)._serve())
            try:
                svc = await asyncio.wait_for(connecting, 5)
                try:
                    assert await svc.call("hi") == {"echo": "hi"}
                finally:
                    await svc.__aexit__(None, None, None)
            finally:
                restarted.cancel()
                await asyncio.gather(restarted, return_exceptions=True)

    run(scenario)


def test_an_address_that_keeps_refusing_the_secret_fails_at_the_timeout_naming_it(where):  # noqa: F811
    """Nothing registers the service anew: the client fails at its timeout
    (not at once, not later), saying the registered address refused its
    secret."""

    async def scenario():
        async with stale_registration(where) as (name, foreign):
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ServiceError) as failed:
                async with ServiceClient(name, coordinator=where, timeout=0.6):
                    pass
            took = loop.time() - started
            assert str(failed.value).startswith(
                f"service '{name}': 127.0.0.1:{foreign.port}, where it is registered, refused this client's "
                "secret for 0.6 s (authentication failed with process 0 at http://127.0.0.1:"), failed.value
            assert 0.55 <= took < 1.5, took

    run(scenario)


def test_a_client_with_a_wrong_secret_fails_at_once_and_says_so(where, monkeypatch):  # noqa: F811
    """(Guard.) The client's own secret is wrong: the coordinator refuses
    it, and the call fails at once (not at its 5 s timeout), saying so,
    though the service is served."""

    async def scenario():
        async with serving(where, lambda request: request) as service:
            async with ServiceClient(service.name, coordinator=where, timeout=5) as svc:
                assert await svc.call("ready") == "ready"
            monkeypatch.setenv("KERNEL_SECRET", "not the secret")
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(ServiceError, match=r"wrong or missing secret"):
                async with ServiceClient(service.name, coordinator=where, timeout=5):
                    pass
            assert loop.time() - started < 1.0

    run(scenario)
