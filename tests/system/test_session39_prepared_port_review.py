"""Session 39 review of the port an executor prepares for a job process's
links (`prepare`, handed over as KERNEL_LINK_FD):

- on a host given by name, the process listens on every interface, IPv6's
  too, as it did when it bound the port itself (`create_server(None, port)`:
  0.0.0.0 and ::); the prepared socket was IPv4's only;
- the socket is the job process's own, not a program's its steps start
  (`os.system`, `Popen(close_fds=False)`): inherited by one left running,
  the port stayed taken after the job had ended;
- a KERNEL_LINK_FD that is no TCP socket (a user's variable, a Unix
  socket) is said plainly, not as a traceback (`IndexError`)."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys

from kernel.system._executor import ExecutorDaemon
from kernel.system._wire import file_fields

NAME = "executor-by-name.invalid"  # (a host name: the process listens on every interface)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:  # (a machine without IPv6: IPv4's every interface is all there is)
        return False


async def test_a_port_prepared_for_a_host_name_listens_on_ipv6_as_on_ipv4(tmp_path):
    executor = ExecutorDaemon(("127.0.0.1", 9), b"review-secret", 1, tmp_path / "executor", host=NAME)
    try:
        port = (await executor._request("prepare", {}))["port"]
        addresses = [("127.0.0.1", port), *([("::1", port)] if _ipv6_loopback() else [])]
        for address in addresses:  # (listening: the connection waits in its backlog for the process)
            with socket.create_connection(address, timeout=5):
                pass
    finally:
        await executor.close()


PIPELINE = """\
import os

from kernel import Dataflow


def leave_a_program_running(n):
    if n == 0:  # (a step that starts a program and does not wait for it)
        os.system("sleep 30 & echo $! > {pids}/$$")
    return n


flow = Dataflow("mod7")
(flow.from_iterable(range(700), batch_size=100).map(leave_a_program_running).key_by(lambda n: n % 7).sum()
 .to_files({out!r}))
"""


async def _ended(entries, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while any(entry.code is None for entry in entries):
        assert asyncio.get_running_loop().time() < deadline, "the job's processes did not end"
        await asyncio.sleep(0.02)


async def test_a_program_a_step_leaves_running_does_not_hold_the_link_port(tmp_path):
    pids, out = tmp_path / "pids", tmp_path / "out"
    pids.mkdir()
    content = PIPELINE.format(pids=str(pids), out=str(out)).encode()
    executors = [ExecutorDaemon(("127.0.0.1", 9), b"review-secret", 1, tmp_path / f"executor{i}",
                                host="127.0.0.1") for i in (0, 1)]
    try:
        ports = [(await e._request("prepare", {}))["port"] for e in executors]
        peers = ",".join(f"127.0.0.1:{port}" for port in ports)
        for i, executor in enumerate(executors):
            await executor._request("start", {
                "job": "job-1", "attempt": 1, "process": i, "peers": peers, "flow": "flow",
                "filename": "leaves.py", **file_fields(content),
                "digest": hashlib.sha256(content).hexdigest(), "cores": 1})
        entries = [next(iter(e.processes.values())) for e in executors]
        await _ended(entries)
        assert [entry.code for entry in entries] == [0, 0], [entry.log_path.read_text() for entry in entries]
        got = sorted(tuple(json.loads(line)) for f in out.glob("part-*.jsonl")
                     for line in f.read_text().splitlines())
        assert got == sorted((k, sum(n for n in range(700) if n % 7 == k)) for k in range(7))
        left = [int(f.read_text()) for f in pids.iterdir()]
        assert len(left) == 1  # (the kernel that had record 0)
        for port in ports:  # the job is over: its ports are free, whatever it left running
            with socket.socket() as free:
                free.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    free.bind(("127.0.0.1", port))
                except OSError as exc:
                    assert exc.errno != errno.EADDRINUSE, f"port {port} held by the program left running"
                    raise
    finally:
        for executor in executors:
            await executor.close()
        for f in pids.iterdir():
            try:
                os.kill(int(f.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass


FLOW = """\
from kernel import Dataflow

flow = Dataflow("one")
flow.from_iterable(range(3)).to_files({out!r})
"""

# A process started with KERNEL_LINK_FD naming one end of a socket pair
STARTER = """\
import os, socket, sys
mine, other = socket.socketpair()
mine.set_inheritable(True)
os.environ["KERNEL_LINK_FD"] = str(mine.fileno())
os.execv(sys.executable, [sys.executable, "-m", "kernel", "run", sys.argv[1], "--process-id", "0",
                          "--peers", "127.0.0.1:9"])
"""


def test_a_link_fd_that_is_no_tcp_socket_is_said_plainly(tmp_path):
    pipeline = tmp_path / "one.py"
    pipeline.write_text(FLOW.format(out=str(tmp_path / "out")))
    done = subprocess.run([sys.executable, "-c", STARTER, f"{pipeline}:flow"], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, KERNEL_SECRET="review-secret"))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "the listening socket handed over (descriptor" in done.stderr, done.stderr
    assert "is not a TCP socket" in done.stderr, done.stderr
