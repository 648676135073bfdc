"""Session 35's review of the links, with real sockets: a dialler the
server does not take (a process already linked, one that should not dial
it) is told why in the handshake; a link whose frames take longer than two
heartbeats to arrive (a slow network, a large frame) is alive, not dead."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from kernel.net._links import LinkError, LinkServer, dial

SECRET = "links-review-secret"


def test_a_dialer_the_server_does_not_take_is_told_why_and_the_server_goes_on(caplog):
    async def scenario():
        received = []

        def on_frame_for(peer):
            return lambda channel, kind, body: received.append((peer, channel, bytes(body)))

        server = LinkServer("127.0.0.1", 0, SECRET, 0, {0}, on_frame_for, expected={1})
        await server.start()
        url = f"http://127.0.0.1:{server.port}"
        link, session = await dial(url, SECRET, 1, {0}, lambda *frame: None, timeout=5)
        reader = asyncio.ensure_future(link.run())
        try:
            errors = []
            for process in (1, 2):
                with pytest.raises(LinkError) as caught:
                    await dial(url, SECRET, process, {0}, lambda *frame: None, timeout=5)
                errors.append(str(caught.value))
            await link.send(0, 1, b"still linked")
            deadline = time.monotonic() + 10
            while not received:
                assert time.monotonic() < deadline, "the linked peer's frame never came"
                await asyncio.sleep(0.005)
            assert received == [(1, 0, b"still linked")]
            assert not reader.done()
            return errors
        finally:
            await link.close()
            await session.close()
            await server.stop()

    with caplog.at_level(logging.WARNING, logger="kernel.links"):
        errors = asyncio.run(scenario())
    port = errors[0].split("127.0.0.1:")[1].split(" ")[0]
    assert errors == [
        f"process 0 at http://127.0.0.1:{port} refused this process (1): process 1 is already linked there "
        "(is --process-id 1 given to two processes, or do the --peers lists differ?)",
        f"process 0 at http://127.0.0.1:{port} refused this process (2): process 2 is not a peer of this "
        "process there (is --process-id 2 given to two processes, or do the --peers lists differ?)"]
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused")] == [
        "refused a link from 127.0.0.1: process 1 is already linked",
        "refused a link from 127.0.0.1: process 2 is not a peer of this process"]
