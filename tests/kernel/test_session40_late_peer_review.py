"""Session 40 review: a process whose higher-numbered peer never connected
within its start-up timeout dials that peer to hear why (a twin of ours
linked there?). The dial was retried for a second: a peer merely late, not
yet listening at the timeout, that started listening within that second
linked this process at once (its own dial, as it starts), then met the retry
as a second process 0: both ends said "two processes claim process id 0"
(a process 1 started 0.3 to 1 s after process 0's timeout, each time), for
a peer that was only late. Now the dial is one try, and a peer that linked
this process meanwhile is no twin."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from _ports import free_ports, listening, wait_until
from _procs import without_stall_reports

SECRET = "session40-late-peer"
PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("late")
flow.from_iterable(range(10)).map(lambda n: n + 1).print()
"""

# process 1, its imports done, started by a file: it listens within moments of it
LATE = """\
import os, pathlib, runpy, sys, time
# (the slow part of a start, done before it is asked: kernel.cli._run no longer brings the facade)
import aiohttp, kernel._facade, kernel.cli._run, kernel.net

trigger = pathlib.Path(sys.argv[1])
while not trigger.exists():
    time.sleep(0.005)
sys.argv = ["kernel.run", *sys.argv[2:]]
runpy.run_module("kernel.run", run_name="__main__")
"""


def test_a_peer_that_listens_just_after_the_start_up_timeout_is_late_not_a_twin(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    (tmp_path / "late.py").write_text(LATE)
    a, b = free_ports(2)
    peers = f"127.0.0.1:{a},127.0.0.1:{b}"
    env = {**os.environ, "KERNEL_SECRET": SECRET}
    # process 1's port held by the test until process 0 dials it there, at its timeout
    held = socket.create_server(("127.0.0.1", b))
    held.settimeout(PROMPTLY)
    procs = []
    try:
        with open(tmp_path / "p0.err", "w") as err0, open(tmp_path / "p1.err", "w") as err1:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--process-id", "0",
                 "--peers", peers, "--startup-timeout", "2"],
                stdout=subprocess.DEVNULL, stderr=err0, env=env))
            procs.append(subprocess.Popen(
                [sys.executable, str(tmp_path / "late.py"), str(tmp_path / "go"),
                 str(tmp_path / "pipeline.py"), "--process-id", "1", "--peers", peers,
                 "--startup-timeout", "5"],
                stdout=subprocess.DEVNULL, stderr=err1, env=env))
        wait_until(lambda: listening(a), timeout=PROMPTLY, what="process 0 to listen")
        asked, _ = held.accept()  # process 0's timeout has passed: it asks process 1 why
        held.close()
        asked.close()
        (tmp_path / "go").touch()  # process 1 starts now, moments late
        codes = [p.wait(PROMPTLY) for p in procs]
    finally:
        held.close()
        for p in procs:
            p.kill()
            p.wait()
    errors = [without_stall_reports((tmp_path / f"p{i}.err").read_text()) for i in (0, 1)]
    assert codes == [1, 1], errors
    assert errors[0] == f"error: process 1 (127.0.0.1:{b}) did not connect within 2 s\n", errors
    assert not any("two processes claim" in e or "already linked" in e for e in errors), errors
