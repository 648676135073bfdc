"""Review of incremental snapshots (session 44): a cluster's processes
choose their kernels' bases apart (a kernel rebases once its deltas add up
to its base), so each keeps its own fallback epoch (`SnapshotStore._fallback`:
the newest complete one before its chain's base). Where a link of one
process's chain fails its checksum, process 0 (`ClusterSnapshots.decide`)
falls back past the epochs needing it, and may meet the fallback epoch
another process kept and this one let go."""

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


def test_a_fallback_epoch_one_process_let_go_is_passed_over_not_refused(tmp_path, caplog):
    """Process 0's kernel (50 keys, 20 changed an epoch) rebases every few
    epochs; process 1's (2,000 keys, 3 changed) every 100, and keeps epoch
    100 as its fallback, which process 0 let go long since. A link of
    process 1's newest chain fails its checksum: no epoch is intact on
    both, and the run starts afresh, as one process does. It was refused:
    'process 0: state_dir ... lacks the snapshots of epoch 100 ... it is
    missing or another one on that machine'."""
    directories = [tmp_path / "state0", tmp_path / "state1"]
    for process, (keys, changes) in enumerate([(50, 20), (2000, 3)]):
        directories[process].mkdir()
        store = SnapshotStore(directories[process], f"snapshots-process{process}.sqlite")
        store.claim("flow", 2, "layout", placement=f"process {process} of 2, 1 core each")
        try:
            run_epochs(store, 130, {f"k{i}": 0 for i in range(keys)}, kernel=process, changes=changes)
            kept = [epoch for epoch, _ in store.completed()]
        finally:
            store.close()
    assert kept == [130, 129, 100], kept  # (process 1's: a base at 101)
    db = sqlite3.connect(directories[1] / "snapshots-process1.sqlite")
    db.execute("UPDATE snapshots SET crc = crc + 1 WHERE epoch = 110")
    db.commit()
    db.close()
    with caplog.at_level("WARNING", logger="kernel"):
        decided = pickle.loads(ClusterSnapshots.decide({p: offer(p, d) for p, d in enumerate(directories)}))
    assert decided == (0, False, (0, None, 0))
    assert "process 0 no longer keeps epoch 100" in caplog.text and "starting afresh" in caplog.text
