"""Which processes hold a file or a socket open, as far as /proc says (a
lock's holder named in an error: the catalog's, a taken port's)."""

from __future__ import annotations

import os
from collections.abc import Iterator


def pids_holding(targets: set[str]) -> Iterator[int]:
    """The pids, other than this process's, with an open descriptor whose
    /proc link is one of `targets` (a file's path, `socket:[INODE]`). A
    process gone meanwhile, another user's, or a descriptor closed
    meanwhile is passed over; without /proc (not Linux), none."""
    if not targets or not os.path.isdir("/proc"):
        return
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{name}/fd")
        except OSError:
            continue
        if any(_link(f"/proc/{name}/fd/{fd}") in targets for fd in fds):
            yield int(name)


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed meanwhile
        return ""
