"""Session 43: the start-up probe of peers' ports (`net._relay._ended_peers`)
trusts a refusal only where the executor says every peer's port was held
before any process started (KERNEL_PEERS_HELD). A process given its own
socket by a user's KERNEL_LINK_FD, beside a peer started after it, took the
peer's port refusing (not listening yet) for the peer having ended: it
failed at once, `no peer 0: ... refuses connections ... it has ended`, and
the peer waited out its start-up timeout for it (test_session40_link_fd_list_review
failed so, 20 s, about one run in two on a loaded machine)."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest
from _ports import free_ports
from _procs import processes_reaped, started_piped

SECRET = "session43-peer-probe-unheld"
PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation
# seconds process 1 runs alone once it serves its port: several of the probe's periods
ALONE = 6 * 0.25

pytestmark = pytest.mark.usefixtures("no_leaks")

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("unheld")
flow.from_iterable(range(10)).map(lambda n: n + 1).print()
"""


def _served(port: int) -> None:
    """Once process 1's links server answers on `port` (its probe runs from then)."""
    with socket.create_connection(("127.0.0.1", port), timeout=PROMPTLY) as probe:
        probe.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        probe.recv(1)  # (the backlog took the connection at once; the answer comes once it serves)


def test_a_peer_started_later_than_a_process_with_its_own_link_fd_is_waited_for(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    a, b = free_ports(2)
    argv = [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--peers",
            f"127.0.0.1:{a},127.0.0.1:{b}", "--startup-timeout", "20", "--process-id"]
    listener = socket.create_server(("127.0.0.1", b))
    with processes_reaped(listener) as procs:
        env = {**os.environ, "KERNEL_SECRET": SECRET, "KERNEL_LINK_FD": str(listener.fileno())}
        procs.append(started_piped([*argv, "1"], env, pass_fds=(listener.fileno(),)))
        listener.close()  # (the process's now)
        _served(b)
        deadline = time.monotonic() + ALONE  # (process 0 not started: its port refuses meanwhile)
        while procs[0].poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        procs.append(started_piped([*argv, "0"], {**os.environ, "KERNEL_SECRET": SECRET}))
        ended = [p.communicate(timeout=PROMPTLY) for p in procs]
    errors = [err.decode() for _, err in ended]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert sorted(int(n) for out, _ in ended for n in out.split()) == list(range(1, 11)), errors
