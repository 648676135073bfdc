"""`Link.sent_bytes` (streamkernel_link_sent_bytes_total): every frame a
link sends, at `Link.size`, against what the other end received."""

from __future__ import annotations

from kernel.net._links import Link
from test_links import connect, start_server, until


async def test_sent_bytes_are_the_frames_the_peer_received():
    received = []
    server = await start_server(received)
    link, session, _reader = await connect(server)
    try:
        assert link.sent_bytes == 0
        for i in range(50):
            await link.send(i % 3, 1, b"x" * (i * 37 % 500))
        await until(lambda: len(received) == 50)
        assert link.sent_bytes == sum(Link.size(body) for *_, body in received) > 0
    finally:
        await link.close()
        await session.close()
        await server.stop()
