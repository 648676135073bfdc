"""Session 34: a coordinator whose --listen address cannot be listened on
(its port taken by another coordinator, an address not this machine's)
ended with asyncio's traceback (`OSError: [Errno 98] error while
attempting to bind on address ...`), and `serve` kept its catalog (and the
catalog's lock) open: it says why in one line, exit 1, and lets go."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from kernel.system._catalog import Catalog
from kernel.system._coordinator import CoordinatorListenFailed, serve


@pytest.fixture
def taken():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_a_coordinator_whose_port_is_taken_says_so_in_one_line(taken, tmp_path):
    done = subprocess.run([sys.executable, "-m", "kernel", "coordinator", "--listen", f"127.0.0.1:{taken}",
                           "--data", str(tmp_path / "data")], capture_output=True, text=True, timeout=60,
                          env={"KERNEL_SECRET": "s", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"error: the coordinator cannot listen on 127.0.0.1:{taken}: Address already in use (another "
        "coordinator, or another program, listens there)"), done.stderr
    assert "Traceback" not in done.stderr


def test_serve_that_cannot_listen_lets_its_catalog_go(taken, tmp_path):
    with pytest.raises(CoordinatorListenFailed, match=r"(?i)address already in use"):
        asyncio.run(serve("127.0.0.1", taken, b"s", tmp_path))
    # (its lock let go: another catalog on that directory opens, in this process too)
    Catalog(tmp_path).close()
