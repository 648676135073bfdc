"""A run resumed on a disk still full, where it writes its first rows.

Found by filling a small tmpfs that held a `to_files` directory and the
state_dir (`--cores 2`), then running the pipeline again without making
room: each run stopped with "state_dir ...: the disk is full; this
snapshot was not written, the previous complete epoch is intact", before
any kernel had started. No snapshot was being written: the run's first
rows (`claim`, `discard_after`, `record_run`) were, and what the user must
do, make room and run again, went unsaid. (Whether a rerun fails there or
at its first snapshot depends on the room SQLite's WAL has left, so the
test drives the store as a run's start does, on a WAL that cannot grow.)"""

from __future__ import annotations

import pytest
from kernel.operators import SNAPSHOT_LAYOUT

from state import SnapshotStore, StateError
from tests._full_disk import fill

SNAPSHOT = b"x" * 2_000




def _complete_then_full(store: SnapshotStore, disk, epochs) -> None:
    """`store` claimed, each of `epochs` written and marked complete, then
    its disk filled."""
    store.claim("flow", 1, SNAPSHOT_LAYOUT)
    for epoch in epochs:
        store.write(epoch, 0, SNAPSHOT)
        store.mark_complete(epoch)
    fill(disk)


@pytest.mark.parametrize("first_rows", ["discard_after", "record_run"])
def test_a_full_disk_where_a_run_starts_says_make_room(tiny_disk, first_rows):
    state = tiny_disk / "state"
    store = SnapshotStore(state)
    try:
        _complete_then_full(store, tiny_disk, (1, 2, 3))
        with pytest.raises(StateError) as caught:
            if first_rows == "discard_after":
                store.discard_after(0)  # (a run resuming epoch 0: every row after it goes)
            else:
                store.record_run(3, {"steps": "x" * 20_000})
    finally:
        store.close()
    message = str(caught.value)
    assert "snapshot was not written" not in message
    assert message.startswith(f"state_dir '{state}': cannot update snapshots.sqlite: the disk is full (")
    assert message.endswith("); make room and run again")

    (tiny_disk / "filler").unlink()  # room again: the store is as it was
    store = SnapshotStore(state)
    try:
        assert store.completed() == [(3, False), (2, False)]
    finally:
        store.close()


def test_a_full_disk_at_a_snapshot_still_says_so(tiny_disk):
    """The snapshot's own wording stays where one is written."""
    store = SnapshotStore(tiny_disk / "state")
    try:
        _complete_then_full(store, tiny_disk, (1,))
        with pytest.raises(StateError, match="the disk is full; this snapshot was not written, the previous "
                                             "complete epoch is intact"):
            store.write(2, 0, SNAPSHOT)
    finally:
        store.close()


def test_a_full_disk_at_the_pruning_after_an_epochs_mark_keeps_the_snapshots_wording(tiny_disk):
    """The pruning after an epoch's mark runs within a run, as the
    snapshot does: its full disk keeps the snapshot's wording (CI: the
    start's "cannot update ... make room and run again" reached a run that
    filled its disk there, and test_store's full-disk test, which asks for
    "the previous complete epoch is intact", failed)."""
    store = SnapshotStore(tiny_disk / "state")
    try:
        _complete_then_full(store, tiny_disk, (1, 2, 3))
        with pytest.raises(StateError, match="the disk is full; this snapshot was not written, the previous "
                                             "complete epoch is intact"):
            store._retire_before(3)
    finally:
        store.close()
