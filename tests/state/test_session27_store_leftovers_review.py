"""Leftovers of earlier reviews in state/: a store file cut to 0 bytes.

A disk that lies about its flushes can leave a file empty after a power
cut. SQLite opens an empty file as an empty database, so a run resumed on
such a state_dir started afresh without a word (its to_files output
written again, its snapshots gone). The store is now created whole under
another name and linked into place, so its own name is never an empty file:
one found empty is refused, naming it and saying what to do.
"""

from __future__ import annotations

import os

import pytest

from kernel import Dataflow, run
from state import SnapshotStore, StateError


def finished_run(state_dir) -> list:
    flow = Dataflow("empty-store")
    out = flow.from_iterable(range(10)).map(lambda x: x * 2).collect()
    run(flow, state_dir=state_dir)
    return out.items


def cut_to_nothing(state_dir) -> None:
    path = state_dir / "snapshots.sqlite"
    assert path.stat().st_size > 0
    os.truncate(path, 0)
    for side in ("-wal", "-shm"):
        if os.path.exists(f"{path}{side}"):
            os.unlink(f"{path}{side}")


def test_a_store_file_cut_to_zero_bytes_is_refused_not_started_afresh(tmp_path):
    state_dir = tmp_path / "state"
    assert finished_run(state_dir) == [x * 2 for x in range(10)]
    cut_to_nothing(state_dir)
    with pytest.raises(StateError, match=r"snapshots\.sqlite is empty.*move the state_dir aside") as caught:
        finished_run(state_dir)
    assert str(state_dir) in str(caught.value)
    assert (state_dir / "snapshots.sqlite").stat().st_size == 0  # left as it was found


def test_opening_an_empty_store_file_is_a_state_error(tmp_path):
    store = SnapshotStore(tmp_path)
    store.claim("flow", 1, "layout")
    store.write(1, 0, b"state")
    store.mark_complete(1)
    store.close()
    cut_to_nothing(tmp_path)
    with pytest.raises(StateError, match="is empty"):
        SnapshotStore(tmp_path)


def test_a_file_system_without_hard_links_still_gets_a_store(tmp_path, monkeypatch):
    # (FAT, some network file systems: os.link fails with EPERM or ENOTSUP)
    import errno

    def no_hard_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_hard_links)
    store = SnapshotStore(tmp_path)
    store.claim("flow", 1, "layout")
    store.write(1, 0, b"state")
    store.mark_complete(1)
    store.close()
    assert (tmp_path / "snapshots.sqlite").stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".new")] == []
    reopened = SnapshotStore(tmp_path)
    try:
        assert reopened.read(1, 0) == b"state"
    finally:
        reopened.close()


def _open_in_this_process(directory) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # (closed meanwhile: listdir's own descriptor)
            continue
        if target.startswith(str(directory)):
            found.append(target)
    return found


@pytest.mark.parametrize("cores, embedded", [(1, False), (2, False), (1, True), (2, True)])
def test_a_run_leaves_no_connection_to_its_store_open(tmp_path, cores, embedded):
    # The store's connection was closed only when the collector found it,
    # after the run had returned: closing, it checkpointed its WAL into the
    # file then, into a state_dir the caller had cut or moved meanwhile (a
    # store cut to 0 bytes right after a run was written whole again).
    import asyncio

    from kernel import run_async

    state_dir = tmp_path / "state"
    flow = Dataflow("closed-store")
    out = flow.from_iterable(range(10)).map(lambda x: x * 2).collect()
    if embedded:
        asyncio.run(run_async(flow, cores=cores, state_dir=state_dir))
    else:
        run(flow, cores=cores, state_dir=state_dir)
    assert sorted(out.items) == [x * 2 for x in range(10)]
    assert _open_in_this_process(state_dir) == []
