"""Session 43: a dial over TLS that nobody answers says so in words. aiohttp
names the `ssl=` a dial was given, and for the links' SSLContext that is
its repr: `error: could not reach https://127.0.0.1:1 within 2 s: Cannot
connect to host 127.0.0.1:1 ssl:<ssl.SSLContext object at 0x7f...>
[Connect call failed ...]`, from a command (`python -m kernel status`) and
from a cluster's process alike. Said `over TLS` now (net._causes:
dial_failure_said)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests._certificates import node_tls_options
from tests.kernel._ports import free_ports

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("tls")
flow.from_iterable(range(10)).sink(id)
"""


@pytest.fixture(scope="module")
def tls_options(tmp_path_factory) -> list[str]:
    return node_tls_options(tmp_path_factory.mktemp("tls"))


def _last_line(args: list[str], cwd=None) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env={**env, "KERNEL_SECRET": "session43-tls-said"})
    assert done.returncode == 1, done.stderr
    return done.stderr.strip().splitlines()[-1]


def _refused_over_tls(port: int) -> str:
    return f"Cannot connect to host 127.0.0.1:{port} over TLS [Connect call failed ('127.0.0.1', {port})]"


def test_a_command_whose_coordinator_is_not_there_says_over_tls(tls_options):
    (port,) = free_ports(1)
    said = _last_line(["kernel", "status", "--coordinator", f"127.0.0.1:{port}", *tls_options])
    assert said == f"error: could not reach https://127.0.0.1:{port} within 2 s: {_refused_over_tls(port)}"


def test_a_cluster_process_whose_peer_is_not_there_says_over_tls(tmp_path, tls_options):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    a, b = free_ports(2)
    said = _last_line(["kernel.run", "pipeline.py", "--process-id", "1", "--peers",
                       f"127.0.0.1:{a},127.0.0.1:{b}", "--startup-timeout", "1", *tls_options], cwd=tmp_path)
    assert said == (f"error: could not reach process 0 at https://127.0.0.1:{a} within 1 s: "
                    f"{_refused_over_tls(a)}")
