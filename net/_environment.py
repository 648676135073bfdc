"""Seconds read from the environment: KERNEL_HEARTBEAT and the topics' and
coordinator's timeouts. Apart from the links (`_links`, which imports
aiohttp), so that a run without peers reads its heartbeat's default from
the same variable, with the same rules, as the links do."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("kernel.links")

# seconds between a link's liveness checks where KERNEL_HEARTBEAT is not set:
# a peer silent for two of them is dead
HEARTBEAT = 2.5
# The shortest heartbeat taken. A link pings a peer it heard nothing from for
# one period and gives it up after a second: heartbeat=1e-4 gave a healthy
# peer 0.2 ms to answer, and a two-process run on one machine failed at once
# (`process 1 did not answer for 0.0002 s`); 0.01 failed one run in three on
# a loaded machine, where a process waits tens of ms for a CPU.
MIN_HEARTBEAT = 0.1


def seconds_from_environment(name: str, default: float, minimum: float = 0.0) -> float:
    """The environment's `name` (seconds, > 0, at least `minimum`) where
    set, else `default`; a value that is not such a number of seconds is
    logged, and `default` used. KERNEL_HEARTBEAT: a network whose pauses are
    longer than two heartbeats, or kernels that may block longer (a slow
    user function), want it longer; a test of dropped links, shorter."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        log.warning("%s=%r is not a positive number of seconds: %g s used", name, text, default)
        return default
    if seconds < minimum:
        log.warning("%s=%r is under the %g s it must be at least: %g s used", name, text, minimum, default)
        return default
    return seconds


def heartbeat_from_environment() -> float:
    """KERNEL_HEARTBEAT where set (at least MIN_HEARTBEAT), else HEARTBEAT:
    the default heartbeat of every link, a run's (`run(heartbeat=)`,
    `--heartbeat`) and a topic's."""
    return seconds_from_environment("KERNEL_HEARTBEAT", HEARTBEAT, MIN_HEARTBEAT)


class _FromEnvironment:
    """A link's `heartbeat` where none is given (None there is no heartbeat)."""

    def __repr__(self) -> str:
        return "KERNEL_HEARTBEAT"


# A link's default heartbeat: heartbeat_from_environment() when the link
# starts. Read at import, KERNEL_HEARTBEAT set in os.environ after `import
# kernel` (a notebook, a test) was ignored.
FROM_ENVIRONMENT: Any = _FromEnvironment()


def heartbeat_or_environment(heartbeat):
    """`heartbeat`, or KERNEL_HEARTBEAT's as it is now where it is FROM_ENVIRONMENT."""
    return heartbeat_from_environment() if heartbeat is FROM_ENVIRONMENT else heartbeat
