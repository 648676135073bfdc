"""Crash points for recovery tests.

`KERNEL_CRASH_AT="point:n"` (or `"point:n@k"`: on kernel k only) makes a
process kill itself with SIGKILL the n-th time it reaches `crash_point(point)`
(`batch`: a file sink mid-batch, `snapshot`: a snapshot written but not yet
reported, `commit`: a file sink mid-commit). Nothing happens without the
variable: the check is one comparison.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("KERNEL_CRASH_AT")
_seen: dict[str, int] = {}


def crash_point(point: str, kernel: int = 0) -> None:
    if _SPEC is None:
        return
    where, _, on_kernel = _SPEC.partition("@")
    name, _, count = where.partition(":")
    if name != point or (on_kernel and int(on_kernel) != kernel):
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
