"""Session 41, review: a command's big request (over BIG_REQUEST bytes, a
pipeline file's) is answered while every handshake slot of the coordinator
is held by its own address's silent connections.

A big request goes on a connection of its own (`Client._ask_apart`), and
a coordinator with all MAX_PENDING handshake slots held by the address a
newcomer comes from lets it in only once one frees (`_make_room_for`: a
stranger holds no more slots than that address would). The command,
connected already, was answered on its own connection before; its apart
connection refused, the request failed as a lost connection
("ConnectionLost: ... could not reach ... Connection reset by peer", and a
`submit` reconnected its own, refused too, and ended). It is now asked on
the command's own connection then, as before.

A coordinator served in the test's loop; the silent connections are plain
TCP sockets from the same loopback address."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _system import SECRET, served_coordinator
from kernel.net._links import MAX_PENDING, LinkError

from kernel.system import Client
from kernel.system._client import BIG_REQUEST


def test_a_big_request_with_every_handshake_slot_held_is_answered(tmp_path):
    async def scenario(address) -> None:
        # (connecting given up after 0.5 s, not 2: its apart connection's too)
        async with Client(address, SECRET.encode(), timeout=0.5) as client:
            assert (await client.request("status"))["topics"] == []
            silent = [socket.create_connection(address) for _ in range(MAX_PENDING)]
            try:
                with pytest.raises(LinkError):  # (every slot taken: a newcomer from here is refused)
                    async with Client(address, SECRET.encode(), timeout=0.5):
                        pass
                # (a field the coordinator does not read: the size of a pipeline file's)
                reply = await client.request("status", padding="x" * (2 * BIG_REQUEST))
                assert reply["topics"] == []
            finally:
                for sock in silent:
                    sock.close()

    asyncio.run(served_coordinator(tmp_path / "data", scenario))
