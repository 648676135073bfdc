"""Session 41 (a new user's walk through the README's "Dashboard"): the
README says the coordinator logs where it serves the system's page,
`coordinator dashboard on http://127.0.0.1:8080/`, "with port 0, the port
the system picked"; but `python -m kernel coordinator --dashboard
127.0.0.1:0` was refused before it started (`error: --dashboard:
'127.0.0.1:0' is not host:port with a port from 1 to 65535`, exit 2), the
address read as a peer's. It is read as a job's `--dashboard` is: port 0
is the system's pick, and a malformed one is said as a job's is."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _coordinator(tmp_path, dashboard: str):
    return subprocess.Popen(
        [sys.executable, "-m", "kernel", "coordinator", "--listen", f"127.0.0.1:{_free_port()}",
         "--data", str(tmp_path / "data"), "--dashboard", dashboard],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={"KERNEL_SECRET": "s", "PATH": "/usr/bin:/bin"})


def test_a_coordinator_dashboard_on_port_0_says_the_port_the_system_picked(tmp_path):
    coordinator = _coordinator(tmp_path, "127.0.0.1:0")
    try:
        said, deadline = None, time.monotonic() + 60
        while said is None and time.monotonic() < deadline:
            line = coordinator.stderr.readline()
            if not line:
                break
            said = re.search(r"coordinator dashboard on (http://127\.0\.0\.1:(\d+)/)$", line.rstrip("\n"))
        assert said is not None, coordinator.communicate(timeout=10)
        assert int(said[2]) > 0
        with urllib.request.urlopen(said[1] + "api/system", timeout=10) as response:
            system = json.load(response)
        assert system["executors"] == [] and system["jobs"] == []
    finally:
        coordinator.terminate()
        coordinator.communicate(timeout=30)


def test_a_malformed_coordinator_dashboard_is_said_as_a_jobs_is(tmp_path):
    coordinator = _coordinator(tmp_path, "bogus")
    _, err = coordinator.communicate(timeout=60)
    assert coordinator.returncode == 2, err
    assert err.splitlines()[-1] == (
        "error: dashboard must be 'HOST:PORT' (e.g. '127.0.0.1:9464'), got 'bogus': no port"), err
