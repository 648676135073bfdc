"""Session 40 review: a command's request refused busy (the catalog locked by
another program) whose connection then goes silent (the heartbeat's pong does
not come: NoAnswer, as the client heartbeat says it) is reconnected to and
asked again, as after any lost connection, not given up on.

`_until_done` took every NoAnswer after a busy refusal for the end of its
REQUEST_TIMEOUT (60 s) and raised the refusal: the heartbeat's, which comes
within 1.5 periods, ended a submit after 1.5 s with "the catalog ... cannot
be used ... (waited 1.5 s in all)", the lock gone meanwhile. The coordinator
is served in the test's loop; the connection goes through a proxy that stops
forwarding (no FIN, no RST) and forwards new connections."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "topics"))
from _system import SECRET, free_port
from test_session39_cut_connections import _DEAD, BlackholeProxy
from test_session39_restart_subscriptions_review import _serving, _stopped

from kernel.system import Client
from kernel.system._client import _until_done

HEARTBEAT = 0.5  # seconds: a silent peer noticed within 0.75 s


def test_a_request_refused_busy_then_cut_silently_is_asked_again_on_a_new_connection(tmp_path, monkeypatch,
                                                                                     capfd):
    monkeypatch.setenv("KERNEL_COORDINATOR_HEARTBEAT", str(HEARTBEAT))

    async def scenario() -> None:
        address = ("127.0.0.1", free_port())
        data = tmp_path / "data"
        served = await _serving(address[1], data, catalog_timeout=0.3)
        proxy = BlackholeProxy(address)
        holder = None
        try:
            async with Client(("127.0.0.1", proxy.port), SECRET.encode()) as client:
                await client.request("status")
                holder = sqlite3.connect(data / "catalog.sqlite", isolation_level=None)
                holder.execute("BEGIN IMMEDIATE")  # (another program holds the catalog's write lock)
                asking = asyncio.ensure_future(_until_done(client, "topic_publish", dict(_DEAD)))
                loop = asyncio.get_running_loop()
                until = loop.time() + 10.0
                while "waiting for the coordinator's catalog" not in capfd.readouterr().err:
                    assert loop.time() < until and not asking.done(), "never refused busy"
                    await asyncio.sleep(0.02)
                proxy.blackhole()  # (silent: its heartbeat's pong does not come)
                holder.rollback()
                assert await asyncio.wait_for(asking, 10.0) == {}
                listed = [t["name"] for t in (await client.request("catalog"))["topics"]]
                assert listed == ["dead"]
        finally:
            if holder is not None:
                holder.close()
            proxy.close()
            await _stopped(served)

    asyncio.run(scenario())
