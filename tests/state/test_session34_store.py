"""Session 34's review of the snapshot store: a full disk where a run opens it."""

from __future__ import annotations

import pytest

from kernel import Dataflow, run
from state import StateError
from tests._full_disk import fill


def test_a_run_resumed_on_a_full_disk_says_the_disk_is_full(tiny_disk):
    """README: "A full disk ends the run with an error that says so". A
    store opened on a disk with no room left (its WAL's shared-memory file
    must grow by 32 KiB) failed with SQLite's SQLITE_IOERR_SHMSIZE, and the
    run ended with `cannot open snapshots.sqlite: disk I/O error`: a
    failing disk, as far as the user could tell, not a full one."""
    flow = Dataflow("counts")
    flow.from_iterable(range(100)).key_by(lambda n: n % 3).count().collect()
    run(flow, state_dir=tiny_disk / "state", epoch_interval=0.02)
    fill(tiny_disk)
    with pytest.raises(StateError, match=r"cannot open snapshots\.sqlite: the disk is full \(disk I/O error, "
                                         r"\d+ bytes free\); make room and run again"):
        run(flow, state_dir=tiny_disk / "state", epoch_interval=0.02)
    (tiny_disk / "filler").unlink()
    run(flow, state_dir=tiny_disk / "state", epoch_interval=0.02)  # room again: it opens
