"""Review of service topics (`flow.serve`, `kernel.services`): each test
but the last asserts what should happen and fails on the code reviewed;
the last is a passing guard.

The servers are the real ones (`Serve`'s, registered with a real
coordinator), run in the test's loop or as a job process, by the helpers
of test_services_robust."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
import signal

import pytest
from test_services_robust import job, only_the_bad_call_fails, run, serving, until, where  # noqa: F401
from test_topics import coordinator, system  # noqa: F401  (fixtures)

from kernel.topics import ServiceError
from kernel.topics._directory import Directory
from kernel.topics._services import _MAX_MESSAGE, Serve, ServiceClient


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_error_text_over_the_message_limit_fails_its_call_only(where, kind):  # noqa: F811
    """A handler's error that echoes a big request (`ValueError(f"no such
    key: {key!r}")`) makes an error text over 16 MiB. `_failed` sends it
    unchecked (`_answer` checks a reply's size, not an error's): the client
    refuses the frame at its head and the connection closes, failing every
    call pipelined on it ("the connection closed (Message size 16777237
    exceeds limit 16777230)") instead of that call alone."""

    error = ValueError("no such key: " + "k" * _MAX_MESSAGE)
    run(functools.partial(only_the_bad_call_fails, where, kind, error, r"failed: ValueError: no such key: k"))


def test_a_sync_handler_that_raises_cancelled_error_fails_its_call_only(where):  # noqa: F811
    """A synchronous handler cannot be cancelled from outside (it has no
    await): a CancelledError it raises is its own (`future.result()` of a
    future that was cancelled), as an async handler's is answered
    ("failed: CancelledError"). `Serve._session` lets it through
    (_PASSES_THROUGH): the session ends, every call pipelined on the
    connection fails with "the connection closed", and the tasks of the
    awaited calls are left running (no `finally`)."""

    error = asyncio.CancelledError("the cached lookup was cancelled")
    pattern = r"^service '{name}' failed: CancelledError: the cached lookup was cancelled$"
    run(functools.partial(only_the_bad_call_fails, where, "sync", error, pattern))


def test_a_connection_lost_while_a_reply_is_sent_cancels_the_connections_handlers(where):  # noqa: F811
    """A client dies (its socket reset) while the server waits for room to
    send a synchronous reply: `ws.send_bytes` in `Serve._session` raises
    ConnectionError("Connection lost"), which leaves the session before its
    last lines, so the connection's awaited calls are never cancelled: a
    handler waiting for something runs for ever, one more a dead client."""

    async def scenario():
        hanging = set()
        big_asked = asyncio.Event()

        async def hang():
            hanging.add("hang")
            try:
                await asyncio.Event().wait()
            finally:
                hanging.discard("hang")

        def handler(request):
            if request == "hang":
                return hang()  # awaited in a task of its own
            big_asked.set()
            return "x" * (_MAX_MESSAGE - 10)  # more than the sockets hold: the server waits to send it

        async with serving(where, handler) as service:
            svc = ServiceClient(service.name, coordinator=where, timeout=5)
            await svc.__aenter__()
            transport = svc._ws._conn.transport
            transport.pause_reading()  # the client reads no more (its replies stay in the sockets)
            calls = [asyncio.ensure_future(svc.call("hang"))]
            await until(lambda: hanging)
            calls.append(asyncio.ensure_future(svc.call("big")))
            await big_asked.wait()  # (the server has written what it could, and waits for room)
            transport.abort()  # the client dies: its unread data makes the close a reset
            await asyncio.gather(*calls, return_exceptions=True)
            await svc.__aexit__(None, None, None)
            with contextlib.suppress(AssertionError):  # (`until`'s "timed out")
                await until(lambda: not hanging, timeout=2)
            assert not hanging, "the dead connection's call is still awaited on the server"

    run(scenario)


def test_a_client_that_stops_reading_does_not_make_the_server_buffer_every_reply(where, monkeypatch):  # noqa: F811
    """An async handler's replies are each written by their own task
    (`Serve._answer_later`), which waits for room only after writing: for a
    client that stops reading (stopped, slow, stuck), every reply it asked
    for piles up in the server's transport, up to _MAX_IN_FLIGHT x 16 MiB
    (16 GiB) a connection. Here 48 replies of 1 MiB: ~44 MiB buffered,
    where a synchronous handler's replies wait for room one at a time."""

    sessions = []
    session = Serve._session

    async def recorded(self, ws):
        sessions.append(ws)
        await session(self, ws)

    monkeypatch.setattr(Serve, "_session", recorded)

    async def scenario():
        answered = []

        async def handler(request):
            answered.append(request)
            return "x" * (1 << 20)

        async with serving(where, handler) as service:
            async with ServiceClient(service.name, coordinator=where, timeout=None) as svc:
                transport = svc._ws._conn.transport
                transport.pause_reading()
                calls = [asyncio.ensure_future(svc.call(n)) for n in range(48)]
                await until(lambda: len(answered) == 48)
                await asyncio.sleep(0)
                buffered = sessions[0]._req.transport.get_write_buffer_size()
                transport.resume_reading()
                assert len(await asyncio.gather(*calls)) == 48
                assert buffered < 8 << 20, f"the server holds {buffered >> 20} MiB for a client not reading"

    run(scenario)


def test_closing_a_client_is_bounded_by_its_timeout_when_the_service_is_frozen(job, where):  # noqa: F811
    """A serving job frozen (SIGSTOP, a stalled VM, a link dropping
    packets): the call fails at the client's timeout (0.5 s), but leaving
    `async with` then waits 10 s (aiohttp's default close timeout, in
    `ServiceClient.__aexit__`'s `ws.close()`, for a close frame that does
    not come). So `kernel.services.call(..., timeout=0.5)` returns after
    ~10.5 s."""
    server, name = job

    async def scenario():
        loop = asyncio.get_running_loop()
        svc = ServiceClient(name, coordinator=where, timeout=0.5)
        await svc.__aenter__()
        try:
            assert await svc.call("before") == "before"
            server.send_signal(signal.SIGSTOP)
            with pytest.raises(ServiceError, match=r"did not answer within 0\.5 s"):
                await svc.call("stopped")
        finally:
            started = loop.time()
            closing = asyncio.ensure_future(svc.__aexit__(None, None, None))
            await asyncio.wait([closing], timeout=2.5)
            took = loop.time() - started
            server.send_signal(signal.SIGCONT)
            await closing
        assert took < 2.5, f"closing the client took {took:.1f} s or more after its call's 0.5 s timeout"

    run(scenario)


def _register(address: str, name: str, kind: str) -> None:
    async def register():
        host, _, port = address.rpartition(":")
        directory = Directory((host, int(port)), os.environ["KERNEL_SECRET"].encode())
        try:
            await directory.request("topic_publish", name=name, id=f"{name}-id", job="app:review", kind=kind,
                                    record_type=None, partitions=1, partition=0, address="127.0.0.1:9")
        finally:
            await directory.close()

    asyncio.run(register())


@pytest.mark.parametrize("case", ["missing", "stream"])
def test_a_service_that_cannot_be_found_is_a_service_error_naming_its_timeout(where, case):  # noqa: F811
    """`ServiceError` is "the service could not be reached" (its docstring),
    and a dropped connection or a dead address raise it; but a name not
    served within the timeout, or served as a stream topic, raised the
    lookup's plain TopicError (`ServiceClient.__aenter__` converts link
    errors only), which `except ServiceError` does not catch. And the text
    gave what was left of the timeout: "within 0.199981 s" for timeout=0.2
    (`directory.lookup(self.name, left())`)."""
    import kernel.services

    name = f"review-{case}-{random.randrange(1 << 30)}"
    if case == "stream":
        _register(where, name, "stream")
        expected = rf"'{name}' is a stream topic, not a service"
    else:
        expected = rf"^no service '{name}' was published within 0\.2 s"
    with pytest.raises(ServiceError, match=expected):
        kernel.services.call(name, "hi", coordinator=where, timeout=0.2)


def test_guard_pipelined_calls_out_of_order_with_failures_and_cancellations_each_get_their_own(where):  # noqa: F811
    """(Passing guard.) 600 pipelined calls to an async handler that answers
    after random delays (some past the timeout), fails some and has every
    7th cancelled by its caller: each call gets its own reply, its own
    error or its timeout, and no handler is left running."""

    async def scenario():
        live = set()

        async def handler(request):
            n, delay, fail = request
            live.add(n)
            try:
                await asyncio.sleep(delay)
            finally:
                live.discard(n)
            if fail:
                raise KeyError(n)
            return {"n": n}

        async with serving(where, handler) as service:
            async with ServiceClient(service.name, coordinator=where, timeout=0.5) as svc:
                rng = random.Random(7)
                delays = [0, 0.001, 0.01, 0.05, 5]
                requests = [(n, rng.choice(delays), rng.random() < 0.1) for n in range(600)]
                calls = [asyncio.ensure_future(svc.call(list(r))) for r in requests]
                for call in calls[::7]:
                    call.cancel()
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
                for (n, delay, fail), outcome in zip(requests, outcomes):
                    if isinstance(outcome, asyncio.CancelledError):
                        assert n % 7 == 0
                    elif delay == 5:
                        assert isinstance(outcome, ServiceError) and "did not answer" in str(outcome), outcome
                    elif fail:
                        assert str(outcome) == f"service '{service.name}' failed: KeyError: {n}"
                    else:
                        assert outcome == {"n": n}
                await until(lambda: not live)
                assert await svc.call([1000, 0, False]) == {"n": 1000}

    run(scenario)
