"""Session 41, review: `status` read slowly (`status --json | less`, a big
status: thousands of jobs, or a topic's large record type) does not have
the coordinator take the command for gone.

`status` printed its reply on its event loop: a pipe's reader that takes
it slowly held the print, and the loop with it, so the command neither
pinged (`_keep_heard`) nor answered the coordinator's pings, and the
coordinator logged "client at 127.0.0.1: No PONG received after 0.25
seconds; closing the connection" of a command that was fine. It now
prints as `logs` does (`_printed`, a thread).

Real processes: a coordinator (its heartbeat 0.5 s) and the CLI; a topic
registered with a 3 MB record type makes the status 3 MB; the test reads
the command's stdout as a pager does: a pipe's worth, a pause of PAUSE s
(four periods: the reader, not a wait for anything), then the rest."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from _system import System, read_as_a_pager

from kernel.system import Client

HEARTBEAT = "0.5"  # seconds: a client silent this long is pinged, and dropped 0.25 s later
PAUSE = 2.0  # seconds the reader takes over its first page
SIZE = 3_000_000  # the topic's record type: the status's size


def test_status_read_slowly_leaves_the_coordinator_quiet(tmp_path):
    system = System(tmp_path)
    system.env["KERNEL_COORDINATOR_HEARTBEAT"] = HEARTBEAT  # (the coordinator's and the command's)
    try:
        system.start_coordinator()

        async def publish() -> None:
            async with Client((system.host, system.port), system.env["KERNEL_SECRET"].encode()) as client:
                await client.request("topic_publish", name="big", id="p1", job="app:x", partition=0,
                                     address="http://127.0.0.1:1", record_type="x" * SIZE)

        asyncio.run(publish())
        status = subprocess.Popen([sys.executable, "-m", "kernel", "status", "--json"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=system.env,
                                  cwd=tmp_path)
        out, err = read_as_a_pager(status, PAUSE)
        assert err == ""
        [topic] = json.loads(out)["topics"]
        assert topic["record_type"] == "x" * SIZE
        assert "No PONG" not in system.coordinator_log.read_text()
    finally:
        system.close()
