"""A headless Chromium driven over the DevTools protocol, with aiohttp's
websocket client (no browser-automation package): start it on a free
DevTools port, find its page, send commands, read their answers.

    async with Chromium() as page:
        await page.call("Page.navigate", url=...)
        text = await page.evaluate("document.body.innerText")
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--window-size=1280,900",
         "--remote-debugging-port=0"]


class ChromiumError(Exception):
    pass


class Chromium:
    def __init__(self, start_timeout: float = 20.0) -> None:
        self.start_timeout = start_timeout
        self._profile: tempfile.TemporaryDirectory | None = None
        self._process: subprocess.Popen | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Chromium:
        if not os.access(CHROMIUM, os.X_OK):
            raise ChromiumError(f"no chromium at {CHROMIUM}: install Debian's package (apt-get install -y "
                                "chromium; .ci/run does it)")
        self._profile = tempfile.TemporaryDirectory(prefix="sk-chromium-")
        profile = Path(self._profile.name)
        self._process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            port = await self._devtools_port(profile / "DevToolsActivePort")
            self._session = aiohttp.ClientSession()
            page = await self._page(port)
            self._ws = await self._session.ws_connect(page, max_msg_size=64 << 20)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *_exc) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._process is not None:
            if self._process.poll() is None:
                os.killpg(self._process.pid, signal.SIGTERM)  # its own session: the browser and its helpers
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
            self._process.stderr.close()
        if self._profile is not None:
            self._profile.cleanup()

    async def _devtools_port(self, path: Path) -> int:
        """Chromium writes the port it took (line 1) once it listens."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while loop.time() < deadline:
            if self._process.poll() is not None:
                raise ChromiumError(f"chromium exited with {self._process.returncode}: "
                                    f"{self._process.stderr.read().decode(errors='replace')[-2000:]}")
            if path.exists():
                lines = path.read_text().split("\n")
                if len(lines) >= 2 and lines[0].isdigit():
                    return int(lines[0])
            await asyncio.sleep(0.05)
        raise ChromiumError(f"chromium wrote no {path.name} in {self.start_timeout} s")

    async def _page(self, port: int) -> str:
        """The websocket address of the browser's page (about:blank)."""
        async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json()
        for target in targets:
            if target.get("type") == "page":
                return target["webSocketDebuggerUrl"]
        raise ChromiumError(f"chromium has no page: {targets}")

    async def call(self, method: str, **params) -> dict:
        """Send a command; its result (events met on the way are dropped)."""
        ident = next(self._ids)
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                raise ChromiumError(f"the DevTools connection ended: {message.type!r}")
            answer = message.json()
            if answer.get("id") == ident:
                if "error" in answer:
                    raise ChromiumError(f"{method}: {answer['error']}")
                return answer["result"]
        raise ChromiumError("the DevTools connection closed")

    async def open_dashboard(self, url: str) -> int:
        """Load a dashboard page, its errors caught (`window.pageErrors`),
        and wait for its first update; the page's update count then."""
        await self.call("Page.enable")
        await self.call("Page.addScriptToEvaluateOnNewDocument", source=CATCH_ERRORS)
        await self.call("Page.navigate", url=url)
        return await self.evaluate(UPDATES_AFTER % 0)

    async def evaluate(self, expression: str, timeout: float = 15.0):
        """The value of a JavaScript expression in the page (a promise is
        awaited); a thrown error is raised here with its text."""
        result = await asyncio.wait_for(self.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True), timeout)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise ChromiumError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")


# Page scripts for `evaluate`. Before the page's own script
# (Page.addScriptToEvaluateOnNewDocument): what it throws, and what fails to load
CATCH_ERRORS = """window.pageErrors = [];
window.addEventListener("error",
  (e) => window.pageErrors.push(String(e.message || e.target.src || e.type)), true);
window.addEventListener("unhandledrejection", (e) => window.pageErrors.push(String(e.reason)));"""

# a promise of the dashboard's update count, once past %d (`UPDATES_AFTER % n`)
UPDATES_AFTER = """new Promise((done, fail) => {
  const start = Date.now();
  (function check() {
    if (window.dashboard && window.dashboard.updates > %d) return done(window.dashboard.updates);
    if (Date.now() - start > 10000) return fail(new Error("no update in 10 s: " + document.body.innerText));
    setTimeout(check, 20);
  })();
})"""
