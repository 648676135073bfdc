"""A Python process of its own, interrupted once it says READY: for tests of
what one Ctrl-C (or SIGTERM) stops."""

import os
import signal
import subprocess
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEADLINE = 8.0  # seconds for the child to end after the signal (it used to wait for ever)


def interrupted(script: str, signum=signal.SIGINT) -> tuple[int, str, str, float]:
    """`script` run until it prints READY, then sent `signum`: (its exit
    code, stdout after READY, stderr, seconds from the signal to its end)."""
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "READY"
        sent = time.monotonic()
        child.send_signal(signum)
        out, err = child.communicate(timeout=DEADLINE)
        return child.returncode, out, err, time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
