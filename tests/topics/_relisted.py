"""What the topics tests of a publisher listed again (or run again under
its id) share: a System of their own for the topic "readings", its
coordinator's heartbeat short, and the jobs' heartbeats to match.

Real processes: the coordinator started here; readings.py and sums.py
(test_topics' helpers) are the tests' own."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import System

HEARTBEATS = {"KERNEL_HEARTBEAT": 0.25, "KERNEL_COORDINATOR_HEARTBEAT": 0.5,
              "KERNEL_TOPIC_CONNECT_TIMEOUT": 1}


def readings_system(tmp_path) -> System:
    """A System for the topic "readings" in `tmp_path`, its coordinator
    started (heartbeat 0.5 s); the caller closes it."""
    system = System(tmp_path)
    system.topic = "readings"
    system.start_coordinator(KERNEL_COORDINATOR_HEARTBEAT="0.5")
    return system
