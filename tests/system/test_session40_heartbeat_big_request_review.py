"""Session 40 review: a command's big request (a pipeline file travels in one
message, up to 64 MiB) going out on a slow link is not cut by the client's
heartbeat (KERNEL_COORDINATOR_HEARTBEAT), and the heartbeat is kept after it.

Nothing comes back while such a request goes out, and the ping the heartbeat
sends after a period of that silence waits behind it (in the sockets'
buffers too); its pong not come within half a period, aiohttp ended the
connection: a 3 MB request through a 2 MB/s uplink with a 0.5 s heartbeat
raised NoAnswer ("did not answer the connection's heartbeat") after 0.75 s,
and by default any upload longer than 7.5 s (a submit's three tries alike),
where it went through before the client had a heartbeat.

A coordinator served in the test's loop; the connection goes through a
proxy (threads) that forwards what the client sends at RATE bytes a second."""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "topics"))
from _system import SECRET, served_coordinator

from kernel.system import Client

HEARTBEAT = 0.5  # seconds: a silent peer noticed within 0.75 s
RATE = 2_000_000  # bytes a second, the client's uplink
SIZE = 3_000_000  # the request's: 1.5 s to go out, two periods of silence and more


class SlowUplink:
    """Forwards TCP connections to `target`; what the client sends goes on
    at `rate` bytes a second, what the target sends at once."""

    def __init__(self, target: tuple[str, int], rate: float) -> None:
        self.target, self.rate = target, rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self._stop = threading.Event()
        self._ends: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:  # (its timeout too: the stop looked at)
                continue
            upstream = socket.create_connection(self.target)
            self._ends += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, self.rate), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, rate: float | None) -> None:
        if rate is not None:  # (the client's side)
            self._opened(source)
        try:
            while True:
                data = source.recv(65536 if rate is None else int(rate * 0.01))
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
                if rate is not None:
                    self._forwarded(source, len(data))
                    time.sleep(len(data) / rate)
        except OSError:
            return

    def _opened(self, source: socket.socket) -> None:
        """A connection of the client's accepted (`source`, its side)."""

    def _forwarded(self, source: socket.socket, n: int) -> None:
        """`n` bytes the client sent on `source` forwarded (before the pause
        that keeps them to `rate`)."""

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        for end in self._ends:
            end.close()


async def a_big_request(client: Client) -> None:
    """A small request, then one of SIZE bytes (a field the coordinator
    does not read: the size of a pipeline file's) on `client`, whose uplink
    is RATE bytes a second: each answered, the big one taking that long."""
    assert (await client.request("status"))["topics"] == []
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await client.request("status", padding="x" * SIZE))["topics"] == []
    assert loop.time() - started >= 0.9 * SIZE / RATE  # (it did take that long to go out)


def test_a_big_request_on_a_slow_uplink_is_not_cut_by_the_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", str(HEARTBEAT))

    async def scenario(address) -> None:
        proxy = SlowUplink(address, RATE)
        try:
            async with Client(("127.0.0.1", proxy.port), SECRET.encode()) as client:
                await a_big_request(client)
                ws = client._session.ws
                # (kept for what follows: its next ping scheduled, a period of silence from the answer)
                assert ws._heartbeat == HEARTBEAT and ws._heartbeat_cb is not None and not ws.closed
        finally:
            proxy.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
