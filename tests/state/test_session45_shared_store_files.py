"""A store's SQLite files that come and go under a shared state_dir.

Found by CI (test_cluster_recovery): process 2 of a cluster resuming from a
shared state_dir was refused it, "snapshots.sqlite-shm is unreadable (no
permission to read it)", as root. SQLite's -wal and -shm files are made
and removed as the other processes open and close the store, and
`os.access` says no for a file gone between the look and the ask."""

from __future__ import annotations

import os

import pytest

from state._store import SnapshotStore, unwritable

NAME = "snapshots.sqlite"


def _racing_access(monkeypatch, file: str, then) -> list[str]:
    """os.access as it is, but the first ask about `file` runs `then(path)`
    first (another process removing or replacing it at that moment) and
    answers what `then` returns, where it returns a bool (the ask that
    found no file under the name, mid-replace)."""
    real = os.access
    asked: list[str] = []

    def access(path, mode, *args, **kwargs):
        if os.fspath(path).endswith(file) and not asked:
            asked.append(os.fspath(path))
            said = then(os.fspath(path))
            if isinstance(said, bool):
                return said
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    return asked


def _new_file(path: str) -> str:
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    return path


@pytest.mark.parametrize("file", [NAME + "-wal", NAME + "-shm"])
@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_wal_file_gone_or_replaced_between_the_look_and_the_ask_refuses_nothing(tmp_path, monkeypatch,
                                                                                  file, how):
    for each in (NAME, NAME + "-wal", NAME + "-shm"):
        (tmp_path / each).write_bytes(b"")

    def replace(path):  # (another process made it anew: a new inode, seen missing by the ask)
        os.replace(_new_file(path + ".new"), path)
        return False
    asked = _racing_access(monkeypatch, file, os.remove if how == "removed" else replace)
    assert unwritable(str(tmp_path), NAME) is None
    assert asked, "the race was never run"


def test_a_store_opened_while_another_process_removes_its_wal_is_opened(tmp_path, monkeypatch):
    SnapshotStore(tmp_path).close()  # (a store from an earlier run)
    for each in (NAME + "-wal", NAME + "-shm"):  # (another process's, open at this one's start)
        (tmp_path / each).write_bytes(b"")
    asked = _racing_access(monkeypatch, NAME + "-shm", os.remove)
    store = SnapshotStore(tmp_path)
    store.close()
    assert asked
