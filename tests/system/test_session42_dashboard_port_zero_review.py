"""`python -m kernel coordinator --listen HOST:P --dashboard HOST:0`, where
P is in the system's ephemeral range: the dashboard was bound first, and
the system could pick P itself for it; the coordinator then failed to
listen and the command said "--listen ...:P and --dashboard ...:0 ask for
the same port: give the dashboard another (HOST:0: the system picks one)",
which it had. Port 0's dashboard is bound after --listen's now. Shown in a
network namespace of its own whose ephemeral range is two ports, one of
which --listen names: the one the system picks first for a bind to port 0."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from _system import SECRET

LOW = 40000  # the namespace's ephemeral range: LOW, LOW + 1

# run in the namespace: its range set, its loopback up, then the coordinator on the port a bind to port
# 0 is given first there; prints what it said and where each of its two servers listens
DRIVER = f"""\
import json, re, socket, subprocess, sys
with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as range_:
    range_.write("{LOW} {LOW + 1}")
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with socket.socket() as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    probe.bind(("127.0.0.1", 0))
    probe.listen()
    picked = probe.getsockname()[1]
coordinator = subprocess.Popen(
    [sys.executable, "-m", "kernel", "coordinator", "--listen", f"127.0.0.1:{{picked}}",
     "--data", sys.argv[1], "--dashboard", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
said, page = [], None
for line in coordinator.stderr:
    said.append(line)
    if (found := re.search(r"coordinator dashboard on http://127.0.0.1:(\\d+)/", line)):
        page = int(found.group(1))
        break
coordinator.terminate()
said += coordinator.stderr.readlines()
print(json.dumps({{"picked": picked, "page": page, "rc": coordinator.wait(10), "said": "".join(said)}}))
"""


def _network_namespace() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _network_namespace(), reason="no network namespace of its own here (unshare -rn)")
def test_a_port_zero_dashboard_never_takes_the_listen_port(tmp_path):
    done = subprocess.run(["unshare", "-rn", sys.executable, "-c", DRIVER, str(tmp_path / "data")],
                          env=dict(os.environ, KERNEL_SECRET=SECRET), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["picked"] in (LOW, LOW + 1), result
    assert result["page"] == ({LOW, LOW + 1} - {result["picked"]}).pop(), result["said"]
    assert f"coordinator listening on 127.0.0.1:{result['picked']}" in result["said"]


def test_a_port_zero_dashboard_on_an_unknown_host_fails_before_anything_is_made(tmp_path):
    # (still bound first: bound once the coordinator listened, its catalog was made first)
    command = [sys.executable, "-m", "kernel", "coordinator", "--listen", "127.0.0.1:1",
               "--data", str(tmp_path / "data"), "--dashboard", "nosuch.invalid:0"]
    done = subprocess.run(command, env=dict(os.environ, KERNEL_SECRET=SECRET), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: dashboard nosuch.invalid:0: unknown host")
    assert not (tmp_path / "data").exists()
