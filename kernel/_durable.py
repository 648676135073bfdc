"""Durable names: a file (or directory) survives a power loss only once its
data is fsynced *and* the directory holding its name is. What an epoch
relies on (to_files's hidden part files and its directory, the state_dir
and its store file) is made durable this way before the epoch is recorded
complete: data fsync, rename if any, directory fsync, then the record.
(A SIGKILL keeps everything the OS holds: only a power loss tells.)"""

from __future__ import annotations

import errno
import os


def fsync_directory(directory: str) -> None:
    """Make the names in `directory` (created, renamed, deleted) durable.
    EINVAL is a file system that cannot fsync a directory (some network and
    FUSE ones, whose names are as durable as they make them): nothing to do,
    as SQLite does. Any other error (EIO, ENOSPC) is raised."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def make_directories(path: str) -> None:
    """`os.makedirs(path, exist_ok=True)`, and each directory it made is
    fsynced into its parent (a new directory's name, and so everything in
    it, could be gone after a power loss). Nothing to fsync when it was
    there: the common case costs one stat."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if not missing:
        return
    os.makedirs(missing[0], exist_ok=True)
    for made in reversed(missing):  # (another process may have made some: an fsync too many, no harm)
        fsync_directory(os.path.dirname(made))


def directory_unwritable(directory: str) -> str | None:
    """Why this process cannot make files in `directory` ("is on a
    read-only file system", "is read-only (no permission to make files in
    it)"), None when it can: asked at a run's start, where what writes
    there (snapshots, to_files's parts) failed later, in other words
    (SQLite's "unable to open database file")."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "is on a read-only file system"
    except OSError:
        pass
    if not os.access(directory, os.W_OK | os.X_OK):
        return "is read-only (no permission to make files in it)"
    return None
