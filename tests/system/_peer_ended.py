"""A job of two processes one of which dies as it starts, before any link
(tests/system/test_session42_peer_ended_at_start.py, and its TLS twin of
session 43): how soon the job runs again, and what its processes logged."""

from __future__ import annotations

import time
from pathlib import Path

from _system import System, wait_until

# The pipeline kills its own process (SIGKILL) as it is imported, in attempt 1 only, on
# process `dies`. In attempt 2 process 1 (which no process dials: its peers wait for it)
# starts slowly: it serves its port only once a connection is pending there (select on
# the sockets its executor held that port with, handed down), process 0's start-up probe,
# bound to come while it is not linked. Each process says `running on process N` once a
# record reaches it (its links are up by then).
PIPELINE = """\
import os
import select
import signal
import socket
import sys
from kernel import Dataflow

attempt = os.environ["KERNEL_RUN"].rsplit(".", 1)[1]
process = sys.argv[sys.argv.index("--process-id") + 1]
if attempt == "1" and process == "{dies}":
    os.kill(os.getpid(), signal.SIGKILL)  # (as it starts: before any link)


def listening_on(port):
    for fd in map(int, os.listdir("/proc/self/fd")):
        try:
            with socket.socket(fileno=os.dup(fd)) as s:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) and s.getsockname()[1] == port:
                    yield fd
        except OSError:  # (not a socket, or gone)
            pass


if attempt == "2" and process == "1":
    port = int(sys.argv[sys.argv.index("--peers") + 1].split(",")[1].rsplit(":", 1)[1])
    held = list(listening_on(port))
    if held:  # (the launcher; its kernels' processes, importing this again, hold none)
        select.select(held, [], [], 5.0)

said = False


def running(record):
    global said
    if not said:
        said = True
        print(f"running on process {{process}}", flush=True)


flow = Dataflow("endless")
flow.from_iterable(range(10**9), batch_size=10).key_by(lambda n: n % 64).sink(running)
"""


def job_logs(root: Path) -> str:
    """The logs of the job processes the executors under `root` started."""
    return "".join(p.read_text() for p in root.glob("executor*/logs/*.log"))


def restarted_after_a_death_at_start(system: System, root: Path, dies: int) -> tuple[float, str]:
    """Submit the job of two processes to `system` (up, its files under
    `root`), process `dies` dying as it starts: the seconds from the death
    heard to the second attempt running (once restarted, once), and the
    job processes' logs by then."""
    pipeline = root / "pipeline.py"
    pipeline.write_text(PIPELINE.format(dies=dies))
    done = system.cli("submit", pipeline, "--processes", "2")
    assert done.returncode == 0, done.stderr
    job = done.stdout.splitlines()[0]
    # (its executor reported the death: the master holds the loss, saying so)
    wait_until(lambda: (s := system.job(job))["message"] or s["attempt"] > 1, every=0.02,
               what=f"{job} to lose process {dies}")
    heard = time.monotonic()
    state = wait_until(lambda: (s := system.job(job))["attempt"] == 2 and s["status"] == "running" and s,
                       every=0.02, what=f"{job} to run again")
    took = time.monotonic() - heard
    assert state["restarts"] == 1, state
    return took, job_logs(root)
