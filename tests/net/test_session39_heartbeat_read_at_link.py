"""Session 39: a link's default heartbeat is `KERNEL_HEARTBEAT` as it is
when the link starts, not when `kernel.net` was imported: set in
os.environ after the import, it was ignored (2.5 s)."""

from __future__ import annotations

import asyncio

from kernel.net._links import LinkServer, dial

SECRET = "s3cret-for-heartbeat"


async def test_a_link_started_after_kernel_heartbeat_is_set_pings_at_its_period(monkeypatch):
    # The server has no heartbeat of its own (it still answers pings): every
    # pong the dialler gets answers a ping its own heartbeat sent, after one
    # quiet period: 0.1 s here, 2.5 s before (none within the 2 s waited).
    monkeypatch.setenv("KERNEL_HEARTBEAT", "0.1")
    server = LinkServer("127.0.0.1", 0, SECRET, 0, {0}, lambda peer: lambda *frame: None, heartbeat=None)
    await server.start()
    link, session = await dial(f"http://127.0.0.1:{server.port}", SECRET, 1, {0}, lambda *frame: None)
    reader = asyncio.ensure_future(link.run())
    try:
        deadline = asyncio.get_running_loop().time() + 2.0
        while link.pongs < 2 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        assert link.pongs >= 2, f"{link.pongs} pongs in 2 s: the link's heartbeat is not 0.1 s"
    finally:
        await link.close()
        await session.close()
        await server.stop()
        reader.cancel()
