"""What the topics tests of a publisher listed again (or run again under
its id) share: a System of their own for the topic "readings", its
coordinator's heartbeat short, and the jobs' heartbeats to match.

Real processes: the coordinator started here; readings.py and sums.py
(test_topics' helpers) are the tests' own."""

from __future__ import annotations

import contextlib
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import System, wait_until

HEARTBEATS = {"KERNEL_HEARTBEAT": 0.25, "KERNEL_COORDINATOR_HEARTBEAT": 0.5,
              "KERNEL_TOPIC_CONNECT_TIMEOUT": 1}


def readings_system(tmp_path) -> System:
    """A System for the topic "readings" in `tmp_path`, its coordinator
    started (heartbeat 0.5 s); the caller closes it."""
    system = System(tmp_path)
    system.topic = "readings"
    system.start_coordinator(KERNEL_COORDINATOR_HEARTBEAT="0.5")
    return system


@contextlib.contextmanager
def taken_out(a, b):
    """Publisher `a` (a test_topics Job) stopped (SIGSTOP) past the
    coordinator's heartbeat and checks, until its subscriber `b` counts it
    lost (or ends); it runs again (SIGCONT) as the block ends, whatever
    happened in it."""
    a.proc.send_signal(signal.SIGSTOP)
    try:  # (taken out: its coordinator connection given up, its address silent to the checks)
        wait_until(lambda: "(a new publisher)" in b.text() or b.proc.poll() is not None, timeout=30,
                   what="B to count A lost")
        yield
    finally:
        a.proc.send_signal(signal.SIGCONT)


def taken_out_and_back(a, b) -> None:
    """`taken_out`, `a` running again as soon as `b` counted it lost."""
    with taken_out(a, b):
        pass
