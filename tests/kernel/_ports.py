"""Free TCP ports on loopback for cluster tests, and what /proc says about
a port (listening, connections accepted, which process listens), so that a
test waits for a cluster to be up instead of sleeping."""

from __future__ import annotations

import os
import socket
import time

_LISTEN, _ESTABLISHED = "0A", "01"


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that were free a moment ago (bound together, then
    released: a peer of the test binds them next)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _sockets_on(port: int) -> list[tuple[str, str]]:
    """(state, inode) of every TCP socket whose local port is `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if int(fields[1].rsplit(":", 1)[1], 16) == port:
                        found.append((fields[3], fields[9]))
        except FileNotFoundError:
            continue
    return found


def listening(port: int) -> bool:
    return any(state == _LISTEN for state, _ in _sockets_on(port))


def wait_until(condition, timeout: float = 20.0, what: str = "the condition") -> None:
    """Poll `condition` (cheap: /proc, a counter) until true; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(0.01)


def listener_pid(port: int, root: int) -> int:
    """The process, `root` or a descendant of it, that listens on `port`
    (a cluster process's link relay)."""
    inodes = {f"socket:[{inode}]" for state, inode in _sockets_on(port) if state == _LISTEN}
    for pid in descendants(root):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in inodes for fd in os.listdir(f"/proc/{pid}/fd")):
                return pid
        except OSError:
            continue
    raise AssertionError(f"no process under {root} listens on port {port}")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (children of any of its threads:
    `run_async` forks its kernels from a thread of its own)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            threads = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for thread in threads:
            try:
                with open(f"/proc/{p}/task/{thread}/children") as f:
                    todo += [int(c) for c in f.read().split()]
            except OSError:
                continue
    return found


def peak_kb(pid: int) -> int | None:
    """`pid`'s peak memory (VmHWM) in kB, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of `pid` from /proc/<pid>/status, in MB (VmRSS: now,
    VmHWM: the peak since it started)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / 1e6
    raise AssertionError(f"no {field} for process {pid}")


def proportional_mb(pid: int) -> float:
    """`pid`'s proportional set size in MB (/proc/<pid>/smaps_rollup: each
    page shared with other processes counted as its share). Unlike VmRSS
    it does not count a forked child's untouched copy of its parent's heap
    in full in every process: a tree's sum counts its share of it (the
    pages shared by the parent and the tree's N processes: N/(N+1) of them),
    so it still grows with the test process's size, by less."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise AssertionError(f"no Pss for process {pid}")
