"""Review of 50f8bb1 (another program's HTTP answer at a peer's port is
named by its status, `(404 Not Found)`): a web server that redirects
(`301 Moved Permanently` to its page) had its redirect followed by
aiohttp's websocket dial, and the error named the page's status, `(200
OK)`, a status the peer's port never gave the dial. It names the first
answer, the redirect's, now."""

from __future__ import annotations

import pytest
from aiohttp import web
from kernel.net._links import NotAKernelServer
from kernel.net._links import connect as links_connect


async def test_a_redirecting_web_server_is_named_by_its_redirect():
    async def page(request: web.Request) -> web.Response:
        if request.path != "/home":
            raise web.HTTPMovedPermanently("/home")
        return web.Response(text="welcome")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        with pytest.raises(NotAKernelServer) as raised:
            await links_connect(url, "s3cret-for-tests", 1, timeout=2)
    finally:
        await runner.cleanup()
    assert str(raised.value) == f"{url} answered, but not as a kernel server (301 Moved Permanently)"
