"""Session 41: a process that reaches none of several lower-numbered peers
within its start-up timeout names every one of them. It named the first
alone (its dials were gathered, the first failure raised): the user found
the others one run at a time."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.kernel._ports import free_ports

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("unreachable")
flow.from_iterable(range(10)).map(lambda n: n + 1).print()
"""

PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation


def _run_last_process(tmp_path, ports: list[int]) -> subprocess.CompletedProcess:
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    peers = ",".join(f"127.0.0.1:{port}" for port in ports)
    return subprocess.run(
        [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--process-id",
         str(len(ports) - 1), "--peers", peers, "--startup-timeout", "1"],
        capture_output=True, text=True, timeout=PROMPTLY,
        env={**os.environ, "KERNEL_SECRET": "session41-unreachable"})


def _refused(port: int) -> str:
    return f"Cannot connect to host 127.0.0.1:{port} ssl:default [Connect call failed ('127.0.0.1', {port})]"


def test_every_lower_numbered_peer_not_reached_is_named(tmp_path):
    a, b, c = free_ports(3)
    done = _run_last_process(tmp_path, [a, b, c])
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: could not reach process 0 at http://127.0.0.1:{a}, process 1 at http://127.0.0.1:{b} "
        f"within 1 s (process 0: {_refused(a)}; process 1: {_refused(b)})")


def test_one_peer_not_reached_is_named_as_before(tmp_path):
    a, b = free_ports(2)
    done = _run_last_process(tmp_path, [a, b])
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: could not reach process 0 at http://127.0.0.1:{a} within 1 s: {_refused(a)}")
