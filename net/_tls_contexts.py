"""TLS contexts made once per process for the same files, made again when
a file changes.

A context was made from the files at every use: every dial of a link, of an
executor retrying its coordinator, of each topic connection, and every
server started. Loading the key pair costs ~1 ms; a client context without
--tls-ca loads the system's trusted CAs, ~85 ms, at every dial. A context is
kept here under its kind and paths with the files' (mtime_ns, size, inode):
a certificate rotated (rewritten, or a new file renamed over it) is read
at the next use. Only files last written a second or more before they
were read are trusted so: a file's mtime ticks with the kernel's coarse
clock (a few ms), and one rewritten in place, to the same size, within the
tick of its last write kept its stamp (git's "racy" entries). A context
whose files cannot be read is not kept: its making raises as before.
Forked children start with none (OpenSSL's state is the parent's)."""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable

# A file's mtime this long before it was read: any later write stamps it anew.
_SETTLED_NS = 1_000_000_000

# (kind, paths) -> (the files' stamps, the context made from them): one
# context for each set of paths, replaced when a file changes
_made: dict[tuple, tuple[tuple, ssl.SSLContext]] = {}
os.register_at_fork(after_in_child=_made.clear)


def _stamps(paths: tuple[str | None, ...]) -> tuple | None:
    """Each file's (mtime_ns, size, inode), None where one cannot be read
    (then no context is kept: making it says why)."""
    try:
        return tuple(None if path is None else _stamp(os.stat(path)) for path in paths)
    except OSError:
        return None


def _stamp(status: os.stat_result) -> tuple[int, int, int]:
    return status.st_mtime_ns, status.st_size, status.st_ino


def _settled(stamps: tuple, read_at_ns: int) -> bool:
    return all(stamp is None or read_at_ns - stamp[0] >= _SETTLED_NS for stamp in stamps)


def context_for(kind: str, paths: tuple[str | None, ...],
                make: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """The context `make()` makes from the files `paths` (None: no file), the
    one made before while those files are unchanged. Its users must not
    change it (none does: aiohttp only reads a context)."""
    stamps = _stamps(paths)
    known = _made.get((kind, paths))
    if stamps is not None and known is not None and known[0] == stamps:
        return known[1]
    read_at = time.time_ns()
    context = make()
    # (kept where the files had settled, and were not changed while they were read)
    if stamps is not None and _settled(stamps, read_at) and _stamps(paths) == stamps:
        _made[(kind, paths)] = (stamps, context)
    return context
