"""Session 42 review: a subscriber whose KERNEL_TLS is malformed, or names
a file that is not there, fails at once saying so, not waiting for ever.

Its connection to the coordinator (`Directory._connect`) read KERNEL_TLS
inside the dial's try, so its TopicError ("expected CERT,KEY or
CERT,KEY,CA") or FileNotFoundError became CoordinatorUnreachable, which a
lookup asks again until it answers: a subscriber without a timeout ran on
for ever, its stderr empty (still running after 15 s; a publisher fails,
its own server's TLS read first).

Real processes: a coordinator, then a subscriber app without a timeout for
each bad KERNEL_TLS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import System

SUBSCRIBER = """
import sys
from kernel import Dataflow, run
flow = Dataflow("subscriber")
flow.subscribe("numbers").collect()
run(flow, coordinator=sys.argv[1])
"""


@pytest.mark.parametrize("setting, said", [
    ("bad", "expected CERT,KEY or CERT,KEY,CA"),
    ("/nowhere/cert.pem,/nowhere/key.pem", "No such file or directory"),
])
def test_a_subscriber_with_a_bad_kernel_tls_fails_saying_so(tmp_path, setting, said):
    system = System(tmp_path)
    try:
        system.start_coordinator()
        (tmp_path / "subscriber.py").write_text(SUBSCRIBER)
        app = subprocess.Popen([sys.executable, "subscriber.py", f"127.0.0.1:{system.port}"], cwd=tmp_path,
                               env=dict(system.env, KERNEL_TLS=setting), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
        try:
            _, err = app.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            app.kill()
            _, err = app.communicate()
            raise AssertionError(f"still waiting after 30 s: {err[-2000:]}") from None
        assert app.returncode == 1 and f"TopicError: KERNEL_TLS={setting!r}" in err, err[-2000:]
        assert said in err and "CoordinatorUnreachable" not in err, err[-2000:]
    finally:
        system.close()
