"""Review of incremental snapshots (session 44): a cluster's processes
take their kernels' bases at the same epochs (the run's first and every
CHAIN-th after it, by number), so each keeps the same fallback epoch
(`SnapshotStore._fallback`: the newest complete one before its chain's
base), however their states' sizes and change rates differ. Where a link
of one process's newest chain fails its checksum, process 0
(`ClusterSnapshots.decide`) falls back to that epoch, intact on both.
When each kernel chose its bases from the bytes it had written, each
process kept its own fallback, and a corrupt link on one left no epoch
intact on both: the cluster started afresh (before a review, it was even
refused: 'process 0: state_dir ... lacks the snapshots of epoch 100')."""

from __future__ import annotations

import pickle
import sqlite3

from kernel._facade import ClusterSnapshots, _shape
from state import SnapshotStore
from state._generations import failing, generations, look
from tests.state.test_session44_chains_review import run_epochs


def offer(process: int, directory) -> bytes:
    """What `ClusterSnapshots` offers process 0 from `directory` (its own
    state_dir), read as it reads it."""
    found = {}
    for generation, files in generations(directory).items():
        seen = look(directory, files)
        found[generation] = {"complete": seen.complete, "rows": seen.rows, "shape": _shape(seen.meta),
                             "key_groups": 128, "runs": {}, "parts": {},
                             "failing": failing(directory, files, [e for e, _, _ in seen.complete])}
    return pickle.dumps({"process": process, "state_dir": str(directory), "error": None, "shape": (2, 1),
                         "per_kernel": None, "generations": found})


def test_a_corrupt_link_on_one_process_falls_back_to_an_epoch_intact_on_both(tmp_path, caplog):
    """Process 0's kernel has 50 keys, 20 changed an epoch; process 1's
    2,000, 3 changed. Both keep epochs 130, 129 (deltas on the base at
    121) and 120, the fallback. Process 1's base at 121 fails its checksum:
    the cluster resumes from 120 on both, saying why."""
    directories = [tmp_path / "state0", tmp_path / "state1"]
    kept = {}
    for process, (keys, changes) in enumerate([(50, 20), (2000, 3)]):
        directories[process].mkdir()
        store = SnapshotStore(directories[process], f"snapshots-process{process}.sqlite")
        store.claim("flow", 2, "layout", placement=f"process {process} of 2, 1 core each")
        try:
            run_epochs(store, 130, {f"k{i}": 0 for i in range(keys)}, kernel=process, changes=changes)
            kept[process] = [epoch for epoch, _ in store.completed()]
        finally:
            store.close()
    assert kept == {0: [130, 129, 120], 1: [130, 129, 120]}, kept
    db = sqlite3.connect(directories[1] / "snapshots-process1.sqlite")
    db.execute("UPDATE snapshots SET crc = crc + 1 WHERE epoch = 121")
    db.commit()
    db.close()
    with caplog.at_level("WARNING", logger="kernel"):
        decided = pickle.loads(ClusterSnapshots.decide({p: offer(p, d) for p, d in enumerate(directories)}))
    assert decided[:2] == (120, False), decided
    assert "falling back to the previous complete epoch" in caplog.text
    assert "starting afresh" not in caplog.text
