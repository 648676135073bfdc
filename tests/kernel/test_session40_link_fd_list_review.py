"""Session 40 review: KERNEL_LINK_FD may list several descriptors (one port
on each of localhost's addresses). A list naming one socket twice (`5,5`, a
user's own variable) had the relay serve it twice: the run failed with
uvloop's RuntimeError and its traceback (`unable to perform operation on
<TCPServer closed=True ...>; the handler is closed`), and its peer waited
out its start-up timeout. Now each socket is served once."""

from __future__ import annotations

import os
import socket
import sys

import pytest
from _ports import free_ports
from _procs import processes_reaped, started_piped

SECRET = "session40-link-fd-list"
PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("listed")
flow.from_iterable(range(10)).map(lambda n: n + 1).print()
"""


def test_a_socket_listed_twice_in_kernel_link_fd_is_served_once(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    a, b = free_ports(2)
    peers = f"127.0.0.1:{a},127.0.0.1:{b}"
    listener = socket.create_server(("127.0.0.1", b))
    fd = listener.fileno()
    argv = [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--peers", peers,
            "--startup-timeout", "20", "--process-id"]
    with processes_reaped(listener) as procs:
        env = {**os.environ, "KERNEL_SECRET": SECRET, "KERNEL_LINK_FD": f"{fd},{fd}"}
        procs.append(started_piped([*argv, "1"], env, pass_fds=(fd,)))
        listener.close()  # (the process's now)
        procs.append(started_piped([*argv, "0"], {**os.environ, "KERNEL_SECRET": SECRET}))
        ended = [p.communicate(timeout=PROMPTLY) for p in procs]
    errors = [err.decode() for _, err in ended]
    assert [p.returncode for p in procs] == [0, 0], errors
    # (each process prints what its kernel holds)
    assert sorted(int(n) for out, _ in ended for n in out.split()) == list(range(1, 11)), errors
