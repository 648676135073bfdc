"""The cluster's epoch protocol alone (kernel/runtime/_cluster_epochs.py):
two processes' launcher sides wired to each other directly, as the relays
would, with real stores; and process 0's choice of the epoch a rerun
resumes from (`ClusterSnapshots.decide`)."""

from __future__ import annotations

import pickle

import pytest

from kernel._facade import ClusterSnapshots
from kernel.runtime._cluster_epochs import ClusterLauncherSide
from state import SnapshotStore, StateError


def wired(tmp_path, kernels: int = 2):
    """Process 0 and 1, messages delivered at once; what each committed."""
    commits = {0: [], 1: []}
    stores = {p: SnapshotStore(tmp_path / f"s{p}", f"snapshots-process{p}.sqlite") for p in (0, 1)}
    for p, store in stores.items():
        store.claim("f", 2 * kernels, "L", f"process {p} of 2, {kernels} cores each")
    sides = {}

    def send_from(p):
        return lambda to, message: sides[to].remote(p, message)

    for p in (0, 1):
        sides[p] = ClusterLauncherSide(stores[p], kernels, p, 2, send_from(p),
                                       lambda e, f, p=p: commits[p].append((e, f)))
    return sides, stores, commits


def test_an_epoch_commits_on_every_process_only_once_durable_on_every_kernel_of_every_process(tmp_path):
    sides, stores, commits = wired(tmp_path)
    sides[1].message(0, ("durable", 1))  # before the agreement: held until then
    for side in sides.values():
        side.restored(0, False)
    sides[0].message(0, ("durable", 1))
    sides[0].message(1, ("durable", 1))
    assert commits == {0: [], 1: []}  # process 1's second kernel has not
    sides[1].message(1, ("durable", 2))
    assert commits == {0: [], 1: []}
    sides[1].message(1, ("durable", 1))
    assert commits == {0: [(1, False)], 1: [(1, False)]}
    assert stores[0].completed() == [(1, False)] == stores[1].completed()
    # a finished kernel counts for later epochs; the final epoch is the last next-epoch
    sides[0].message(0, ("finished", 3))
    sides[0].message(1, ("durable", 2))
    sides[1].message(0, ("durable", 2))
    assert commits[0] == [(1, False), (2, False)] == commits[1]
    sides[0].message(1, ("finished", 4))
    sides[1].message(0, ("finished", 3))
    assert commits[1][-1] == (2, False)
    sides[1].message(1, ("finished", 3))
    assert commits == {0: [(1, False), (2, False), (4, True)], 1: [(1, False), (2, False), (4, True)]}
    assert stores[0].completed()[0] == (4, True) == stores[1].completed()[0]


def offer(process, latest=(0, False), restorable=(), error=None):
    return pickle.dumps({"process": process, "state_dir": f"/st{process}", "error": error,
                         "latest": latest, "restorable": list(restorable)})


def test_a_rerun_resumes_from_the_newest_epoch_complete_anywhere():
    """Process 1 was lost after process 0 completed epoch 5 but before it
    heard: its store says 4, yet it holds epoch 5's snapshots. Resuming from
    4 would publish epoch 5's records a second time on process 0."""
    decide = ClusterSnapshots.decide
    assert pickle.loads(decide({0: offer(0, (5, False), [6, 5, 4]), 1: offer(1, (4, False), [5, 4, 3])})) \
        == (5, False)
    assert pickle.loads(ClusterSnapshots.decide({0: offer(0), 1: offer(1)})) == (0, False)
    assert pickle.loads(decide({0: offer(0, (7, True), [7]), 1: offer(1, (6, False), [7, 6])})) == (7, True)


def test_a_process_that_cannot_resume_is_named():
    with pytest.raises(StateError, match=r"^process 1: state_dir '/st1' holds no snapshots of this flow, "
                                         r"but process 0's is at epoch 5"):
        ClusterSnapshots.decide({0: offer(0, (5, False), [5]), 1: offer(1)})
    with pytest.raises(StateError, match=r"^process 0: state_dir '/st0' lacks the snapshots of epoch 5"):
        ClusterSnapshots.decide({0: offer(0, (3, False), [3]), 1: offer(1, (5, False), [5])})
    with pytest.raises(StateError, match=r"^process 1: damaged"):
        ClusterSnapshots.decide({0: offer(0), 1: offer(1, error="damaged")})


def test_a_store_refuses_another_placement_of_the_same_number_of_kernels(tmp_path):
    """2 processes of 2 cores -> 4 processes of 1: four kernels either way,
    numbered otherwise."""
    store = SnapshotStore(tmp_path, "snapshots-process1.sqlite")
    store.claim("f", 4, "L", "process 1 of 2, 2 cores each")
    store.claim("f", 4, "L", "process 1 of 2, 2 cores each")  # the same: fine
    with pytest.raises(StateError, match=r"was written as process 1 of 2, 2 cores each and this run is "
                                         r"process 1 of 4, 1 core each: a cluster resumes with the same"):
        store.claim("f", 4, "L", "process 1 of 4, 1 core each")
    store.close()


def test_a_process_lost_before_it_heard_the_final_epoch_resumes_from_it():
    """Its kernels had all written their FINAL snapshots and it had
    reported, process 0 completed the final epoch 9; it never heard, so its
    store's newest complete epoch is 6 and no snapshot is numbered 9."""
    decided = ClusterSnapshots.decide({0: pickle.dumps({"process": 0, "state_dir": "/st0", "error": None,
                                                        "latest": (9, True), "restorable": [9, 8],
                                                        "ended_after": None}),
                                       1: pickle.dumps({"process": 1, "state_dir": "/st1", "error": None,
                                                        "latest": (6, False), "restorable": [6, 5],
                                                        "ended_after": 5})})
    assert pickle.loads(decided) == (9, True)
