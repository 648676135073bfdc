"""`python -m kernel coordinator` given one port for --listen and
--dashboard: the dashboard binds first, and the coordinator's own listen
then failed with "Address already in use (another coordinator, or another
program, listens there)", which sent the user looking for a program that
was not there. It says now that the two options ask for the same port."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _system import free_port


def _coordinator(tmp_path, listen: str, dashboard: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kernel", "coordinator", "--listen", listen, "--data", str(tmp_path / "data"),
         "--dashboard", dashboard],
        env=dict(os.environ, KERNEL_SECRET="system-test-secret"), capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("dashboard_host", ["127.0.0.1", "0.0.0.0", "localhost"])
def test_one_port_for_listen_and_dashboard_names_both_options(tmp_path, dashboard_host):
    port = free_port()
    done = _coordinator(tmp_path, f"127.0.0.1:{port}", f"{dashboard_host}:{port}")
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --listen 127.0.0.1:{port} and --dashboard {dashboard_host}:{port} "
                           f"ask for the same port"), done.stderr
    assert "another program" not in done.stderr and "coordinator listening" not in done.stderr


def test_a_port_another_program_holds_is_still_said_so(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        done = _coordinator(tmp_path, f"127.0.0.1:{busy}", "127.0.0.1:0")
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: the coordinator cannot listen on 127.0.0.1:{busy}: Address already in use "
        "(another coordinator, or another program, listens there)"), done.stderr
