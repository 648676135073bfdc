"""Session 38's review of the dialler's per-try handshake bound: a server
that answers our hello late (its process stalled between the two) has
taken the link as it answers, so giving up on that answer dropped a link
the server held (a cluster's start ended, `lost process 1 ... it closed
the link`). Real sockets: a real LinkServer on its own thread and loop (a
process of its own, as a peer is), stalled once where a peer may stall."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

from kernel.net._links import LinkServer, connect

SECRET = "dialler-review-secret"
STALL = 0.25  # seconds the server stalls with our hello read, before its answer
HELLO_BOUND = 0.05  # the dialler's per-try bound (HANDSHAKE_TIMEOUT, 5 s, in a cluster)


class _StalledOnce(LinkServer):
    """Stalls its loop once, after reading a dialler's hello (in the check
    it makes then), as a peer's process frozen for a moment would."""

    stalled = False

    def _unexpected(self, peer: int, address: str) -> str | None:
        if not self.stalled:
            self.stalled = True
            time.sleep(STALL)
        return super()._unexpected(peer, address)


@contextlib.contextmanager
def _server_on_its_own_loop():
    loop = asyncio.new_event_loop()
    links: list = []
    server = _StalledOnce("127.0.0.1", 0, SECRET, 0, {0}, lambda peer: (lambda *frame: None),
                          on_link=links.append, expected={1})
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    try:
        yield server, links
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


async def test_an_answer_late_past_the_hello_bound_is_waited_for_not_a_link_the_server_took_dropped():
    """Without the fix: the dialler gave up at HELLO_BOUND, closed the link
    the server took a moment later, and dialled again (three links taken
    and dropped in 6 s, then `could not reach`)."""
    with _server_on_its_own_loop() as (server, links):
        ws, peer, _, session = await connect(f"http://127.0.0.1:{server.port}", SECRET, 1, timeout=10,
                                             handshake_timeout=HELLO_BOUND)
        try:
            assert peer == 0 and not ws.closed
            deadline = time.monotonic() + 10
            while not links and time.monotonic() < deadline:  # (its thread takes it as it answers us)
                await asyncio.sleep(0.01)
            assert len(links) == 1 and not links[0].closed.done()  # the server's one link is this one
        finally:
            await ws.close()
            await session.close()
