"""Session 40: the listening socket an executor hands a job process
(KERNEL_LINK_FD) is served by its link relay alone. Its kernels, forked from
the launcher, each held a copy until the job process exited: on a failure
path (the relay gone, the kernels and launcher still ending) a late dialler's
connection waited in the backlog instead of being refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from _ports import descendants, free_ports, wait_until

SECRET = "session40-holders"
PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("held")
flow.from_iterable(range(10)).map(lambda n: n + 1).print()
"""


def _holders(root: int, inode: int) -> list[int]:
    """The processes, `root` or under it, that hold the socket `inode`."""
    found = []
    for pid in descendants(root):
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue
        if f"socket:[{inode}]" in links:
            found.append(pid)
    return found


def _started(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[19])  # (starttime, in clock ticks)


def test_the_handed_socket_is_held_by_the_relay_alone(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    mine, absent = free_ports(2)
    listener = socket.socket()
    listener.bind(("127.0.0.1", mine))
    listener.listen(16)
    inode = os.fstat(listener.fileno()).st_ino
    env = {**os.environ, "KERNEL_SECRET": SECRET, "KERNEL_LINK_FD": str(listener.fileno())}
    with open(tmp_path / "err", "w") as err:
        # process 1 of two, whose process 0 never comes: it waits for it
        proc = subprocess.Popen([sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"),
                                 "--process-id", "1", "--peers", f"127.0.0.1:{absent},127.0.0.1:{mine}",
                                 "--cores", "2", "--startup-timeout", "30"],
                                stdout=subprocess.DEVNULL, stderr=err, env=env, pass_fds=(listener.fileno(),))
    listener.close()  # (the process's now)
    try:
        # the launcher, its two kernels and its relay, the last forked: the
        # launcher's copy closed once it is (the kernels close theirs as they start)
        wait_until(lambda: len(descendants(proc.pid)) == 4 and len(_holders(proc.pid, inode)) <= 1,
                   timeout=PROMPTLY, what="the socket held by one process")
        # (forked last: the latest start, and, started in one clock tick, the highest pid)
        relay = max(descendants(proc.pid)[1:], key=lambda pid: (_started(pid), pid))
        assert _holders(proc.pid, inode) == [relay]
        with socket.create_connection(("127.0.0.1", mine), timeout=5):
            pass  # (still listening: the relay serves it)
    finally:
        proc.kill()
        proc.wait()
