"""How far a dial's try got before it ran out of time: said in its error.

A try that times out is either a connection nobody answered (no SYN-ACK:
a firewall dropping it, a host that is gone, a listener whose backlog is
full) or a connection made and then left silent (a stopped process, a
program that accepts and says nothing). The first is not "it accepted the
connection": aiohttp's trace of its own connector tells the two apart.
"""

from __future__ import annotations

import aiohttp


class DialProgress:
    """Whether the current try's connection was made (TCP, and TLS on
    https): `trace` goes in the dialling session's `trace_configs`, `start`
    before each try. `connected` is None where no trace was given (a
    caller's session): then nobody knows."""

    def __init__(self) -> None:
        self.connected: bool | None = None
        self._traced = False

    def trace(self) -> aiohttp.TraceConfig:
        self._traced = True
        config = aiohttp.TraceConfig()
        config.on_connection_create_end.append(self._made)
        config.on_connection_reuseconn.append(self._made)
        return config

    def start(self) -> None:
        self.connected = False if self._traced else None

    async def _made(self, *_) -> None:
        self.connected = True

    def silence(self, url: str) -> ConnectionError:
        """What a try that ran out of time met, as an error to say."""
        if self.connected:
            return ConnectionError("it accepted the connection but never answered")
        if self.connected is None:
            return ConnectionError("no answer (to the connection, or on it)")
        if url.startswith(("https:", "wss:")):
            return ConnectionError("the connection was never completed (no answer to its TCP connect "
                                   "or its TLS handshake)")
        return ConnectionError("the connection was never answered (its TCP connect timed out: "
                               "nothing there, a firewall dropping it, or a listener with a full backlog)")
