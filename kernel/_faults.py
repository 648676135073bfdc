"""Crash points for recovery tests, signal points for supervision tests.

`KERNEL_CRASH_AT="point:n"` (or `"point:n@k"`: on kernel k only) makes a
process kill itself with SIGKILL the n-th time it reaches `crash_point(point)`
(`batch`: a file sink mid-batch, `snapshot`: a snapshot written but not yet
reported, `commit`: a file sink mid-commit, `committed`: a kernel process
that has just published an epoch complete on every kernel, not the last:
a crash that leaves an epoch to resume from, however slowly epochs
complete under load).

`KERNEL_SIGNAL_AT="point:n:SIGNAL"` (or `"point:n:SIGNAL@group"`: to the
whole process group, as a terminal's Ctrl-C) makes a process send itself
SIGNAL the n-th time it reaches `signal_point(point)` (`forked`: the
launcher, a kernel forked but not yet in its books; `fork_parent`: a
process that has just forked, in its at-fork hooks, where CPython swallows
what a handler raises; `fork_child`: a process just forked, in its at-fork
hooks, before a kernel has set its own signal handlers). Nothing happens
without the variables: each check is one comparison.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("KERNEL_CRASH_AT")
_SIGNAL_SPEC = os.environ.get("KERNEL_SIGNAL_AT")
_seen: dict[str, int] = {}


def crash_point(point: str, kernel: int = 0) -> None:
    if _SPEC is None:
        return
    where, _, on_kernel = _SPEC.partition("@")
    name, _, count = where.partition(":")
    if name != point or (on_kernel and int(on_kernel) != kernel):
        return
    if _reached(point, count):
        os.kill(os.getpid(), signal.SIGKILL)


def signal_point(point: str) -> None:
    if _SIGNAL_SPEC is None:
        return
    where, _, to = _SIGNAL_SPEC.partition("@")
    name, count, sig = where.split(":")
    if name != point or not _reached(point, count):
        return
    if to == "group":
        os.killpg(os.getpgrp(), signal.Signals[sig])
    else:
        os.kill(os.getpid(), signal.Signals[sig])


def _reached(point: str, count: str) -> bool:
    """Count a visit of `point`: is this the `count`-th (default: the first)?"""
    _seen[point] = _seen.get(point, 0) + 1
    return _seen[point] == int(count or 1)


os.register_at_fork(after_in_parent=lambda: signal_point("fork_parent"),
                    after_in_child=lambda: signal_point("fork_child"))
