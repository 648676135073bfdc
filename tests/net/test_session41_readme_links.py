"""README, "Several machines": a peer's address where another program
answers HTTP ends the run with that program's status, `(404 Not Found)`
(aiohttp's own words for any status but 101, `404 Invalid response
status`, read as if that were the server's answer)."""

from __future__ import annotations

import pytest
from aiohttp import web
from kernel.net._links import LinkError
from kernel.net._links import connect as links_connect


async def test_another_http_server_is_named_by_its_status_and_reason():
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    try:
        with pytest.raises(LinkError) as raised:
            await links_connect(url, "s3cret-for-tests", 1, timeout=2)
    finally:
        await runner.cleanup()
    assert str(raised.value) == f"{url} answered, but not as a kernel server (404 Not Found)"
