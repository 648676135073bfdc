"""Session 29: the catalog client's edges (kernel/system/_client.py).

(a) `kill` whose connection is lost again while it checks whether the
    job is killed already (a second coordinator restart) ended with
    "connection closed": it reconnects again, within its time bound, as
    after the first.
(b) `submit`/`kill` took the coordinator's --catalog-timeout and then 60
    s of retries counted from the first busy refusal (~70 s): the whole
    command's wait is bounded by one limit (REQUEST_TIMEOUT, 60 s),
    measured from its start.
(c) its last error named the last try's wait ("held it for more than
    0.5 s"): it says the time waited in all.

The CLI's limit is cut to 1.5 s in these tests as session 28's were
(`_client.REQUEST_TIMEOUT` set before `main`)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time

from _system import System
from test_catalog_lock_review import _hold, _release
from test_system import NOOP, write

_SHORT = ("import sys; from kernel.system import _client; _client.REQUEST_TIMEOUT = 1.5; "
          "from kernel.system._cli import main; sys.exit(main(sys.argv[1:]))")

# A coordinator of a script (real process, socket, handshake and protocol:
# kernel.system's own server and Session) whose connections end as two
# restarts end them: the first while `kill` waits on a busy catalog, the
# second while it asks whether the job is killed already; the third
# answers that it is.
RESTARTING = """\
import asyncio, sys
from kernel.net._links import AuthenticatedServer
from kernel.system._wire import CLIENT, COORDINATOR, MAX_MESSAGE, PATH, RequestError, Session

connections = []

class Restarting(AuthenticatedServer):
    noun, path = "a system connection", PATH

    async def _session(self, ws, peer, meta, address):
        connections.append(ws)
        n = len(connections)
        session = Session(ws, None, "client")
        busy = []

        async def handler(op, m):
            print(n, op, flush=True)
            if n == 1 and op == "kill" and not busy:
                busy.append(1)
                raise RequestError("the catalog cannot be written (database is locked: pid 1 (x) has held "
                                   "it for more than 0.5 s): the job was not killed", busy=True)
            if n < 3:  # (the first connection's second kill, the second's job check)
                await ws.close()
                await asyncio.Event().wait()  # (no reply: its connection is closed)
            return {"id": m["job"], "status": "killed"}

        session.handler = handler
        await session.run()

async def main():
    server = Restarting("127.0.0.1", 0, b"session-29-secret", COORDINATOR, max_frame=MAX_MESSAGE,
                        meta={"role": "coordinator"})
    await server.start()
    print(server.port, flush=True)
    await asyncio.Event().wait()  # (serves till the test kills it)

asyncio.run(main())
"""


def test_kill_reconnects_again_when_its_check_of_the_job_loses_the_connection(tmp_path):
    coordinator = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RESTARTING)],
                                   stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        port = int(coordinator.stdout.readline())
        env = dict(System(tmp_path).env, KERNEL_SECRET="session-29-secret",
                   KERNEL_COORDINATOR=f"127.0.0.1:{port}")
        done = subprocess.run([sys.executable, "-m", "kernel", "kill", "job-7"], capture_output=True,
                              text=True, timeout=30, env=env, cwd=tmp_path)
    finally:
        coordinator.kill()
        asked = coordinator.communicate()[0]
    assert (done.returncode, done.stdout) == (0, "job-7 killed\n"), done.stderr
    assert asked.split("\n")[:4] == ["1 kill", "1 kill", "2 job", "3 job"]


def test_a_busy_catalog_ends_the_submit_within_one_limit_from_its_start_saying_the_time_waited(tmp_path):
    # The coordinator holds a try for its --catalog-timeout (4 s) or until
    # the client's wait is half over; the retries' 1.5 s were counted from
    # the first refusal, and the last try's wait came on top.
    system = System(tmp_path)
    try:
        system.start_coordinator("--catalog-timeout", "4")
        system.start_executor(1)
        system.executors_up(1)
        pipeline = write(tmp_path / "noop.py", NOOP)
        holder = _hold(system)
        try:
            started = time.monotonic()
            cli = subprocess.run([sys.executable, "-c", _SHORT, "submit", pipeline], capture_output=True,
                                 text=True, timeout=30, env=system.env, cwd=system.root)
            took = time.monotonic() - started
        finally:
            _release(holder)
        assert system.status()["jobs"] == []
        assert (cli.returncode, cli.stdout) == (1, ""), cli
        waiting, error = cli.stderr.splitlines() + [""] * (cli.stderr.count("\n") < 2)
        assert re.fullmatch(rf"waiting for the coordinator's catalog \(database is locked: pid {holder.pid} "
                            r"\(python\) has held it for more than [\d.]+ s( \([^)]*\))?\); "
                            r"asking again until 1\.5 s from the command's start", waiting), waiting
        gave_up = re.fullmatch(
            rf"error: the catalog {re.escape(str(tmp_path / 'data' / 'catalog.sqlite'))} cannot be written "
            rf"\(database is locked: pid {holder.pid} \(python\) has held it\): the job was not submitted "
            r"\(waited ([\d.]+) s in all\)", error)
        assert gave_up and 1.2 <= float(gave_up[1]) <= 1.5, error  # (no try with under 0.2 s left)
        assert took < 5, took  # (an interpreter's start, and 1.5 s)
    finally:
        system.close()
