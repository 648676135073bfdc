"""The cluster's epoch protocol alone (kernel/runtime/_cluster_epochs.py):
two processes' launcher sides wired to each other directly, as the relays
would, with real stores; and process 0's choice of the epoch a rerun
resumes from (`ClusterSnapshots.decide`)."""

from __future__ import annotations

import pickle

import pytest
from kernel.state._generations import Generation

from kernel._facade import ClusterSnapshots
from kernel.runtime._cluster_epochs import ClusterLauncherSide
from state import FINAL, SnapshotStore, StateError


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
        sides[p] = ClusterLauncherSide(lambda generation, p=p: stores[p], kernels, p, 2, send_from(p),
                                       lambda e, f, p=p: commits[p].append((e, f)))
    return sides, stores, commits


def test_an_epoch_commits_on_every_process_only_once_durable_on_every_kernel_of_every_process(tmp_path):
    sides, stores, commits = wired(tmp_path)
    sides[1].message(0, ("durable", 1))  # before the agreement: held until then
    for side in sides.values():
        side.restored(0, False, (0, None, 0))
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


CLUSTER = Generation(0, True)  # snapshots-process{P}.sqlite
LOOPS = ("a flow with loops (Stream.iterate)", "its rounds' state is kept per kernel, not by key")


def offer(process, complete=(), rows=(), error=None, generation=CLUSTER, shape=(2, 1), loops=False,
          new_shape=(2, 1)):
    """A process's offer: what its state_dir holds of one generation
    (`complete`: (epoch, final, kernels) newest first; `rows`: (epoch,
    kernel, kernels) snapshots there), for a run of `new_shape`."""
    generations = {}
    if complete or rows:
        generations[generation] = {"complete": list(complete), "rows": set(rows), "shape": shape,
                                   "key_groups": 128}
    return pickle.dumps({"process": process, "state_dir": f"/st{process}", "error": error,
                         "shape": new_shape, "generations": generations,
                         "per_kernel": LOOPS if loops else None})


def decided(offers: dict) -> tuple:
    return pickle.loads(ClusterSnapshots.decide(offers))


def test_a_rerun_resumes_from_the_newest_epoch_complete_anywhere():
    """Process 1 was lost after process 0 completed epoch 5 but before it
    heard: its store says 4, yet it holds epoch 5's snapshots. Resuming from
    4 would publish epoch 5's records a second time on process 0."""
    assert decided({0: offer(0, [(5, False, 2), (4, False, 2)], [(6, 0, 2), (5, 0, 2), (4, 0, 2)]),
                    1: offer(1, [(4, False, 2), (3, False, 2)], [(5, 1, 2), (4, 1, 2), (3, 1, 2)])}) \
        == (5, False, (0, None, 5))
    assert decided({0: offer(0), 1: offer(1)}) == (0, False, (0, None, 0))
    assert decided({0: offer(0, [(7, True, 2)], [(7, 0, 2)]),
                    1: offer(1, [(6, False, 2)], [(7, 1, 2), (6, 1, 2)])}) == (7, True, (0, None, 7))


def test_a_process_that_cannot_resume_is_named():
    with pytest.raises(StateError, match=r"^process 1: state_dir '/st1' holds no snapshots of this flow, "
                                         r"but process 0's is at epoch 5"):
        decided({0: offer(0, [(5, False, 2)], [(5, 0, 2)]), 1: offer(1)})
    with pytest.raises(StateError, match=r"^process 0: state_dir '/st0' lacks the snapshots of epoch 5"):
        decided({0: offer(0, [(3, False, 2)], [(3, 0, 2)]), 1: offer(1, [(5, False, 2)], [(5, 1, 2)])})
    with pytest.raises(StateError, match=r"^process 1: damaged"):
        decided({0: offer(0), 1: offer(1, error="damaged")})


def test_another_shape_reads_every_old_kernel_from_a_state_dir_they_share():
    """2 processes of 1 core wrote epoch 5; 3 processes of 1 core resume it
    in a new generation (snapshots-e5-3x1-process{P}.sqlite), each kernel reading
    both old kernels' snapshots: every process must see them all."""
    everything = [(5, 0, 2), (5, 1, 2), (4, 0, 2), (4, 1, 2)]
    shared = {p: offer(p, [(5, False, 2), (4, False, 2)], everything, new_shape=(3, 1)) for p in range(3)}
    assert decided(shared) == (5, False, (5, ((0, True, None), 2, 128, None), 5))
    local = {**shared, 2: offer(2, new_shape=(3, 1))}
    refusal = (r"^process 2: state_dir '/st2' lacks the snapshots of kernels 0, 1 of epoch 5, written by a "
               r"cluster of 2 processes with 1 core each, and this run is a cluster of 3 processes with 1 "
               r"core each: a cluster resumes on another number of processes or cores only from a "
               r"state_dir that every process shares")
    with pytest.raises(StateError, match=refusal):
        decided(local)
    # one process's store, resumed by a cluster; a flow with loops keeps its kernel count
    one = {p: offer(p, [(5, False, 2)], [(5, 0, 2), (5, 1, 2)], generation=Generation(0, False), shape=None,
                    new_shape=(2, 2)) for p in range(2)}
    assert decided(one) == (5, False, (5, ((0, False, None), 2, 128, None), 5))
    loops = {p: offer(p, [(5, False, 2)], [(5, 0, 2), (5, 1, 2)], loops=True, new_shape=(3, 1))
             for p in range(3)}
    with pytest.raises(StateError, match=r"a flow with loops \(Stream.iterate\) resumes on as many kernels"):
        decided(loops)


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
    assert decided({0: offer(0, [(9, True, 2), (8, False, 2)], [(9, 0, 2), (8, 0, 2)]),
                    1: offer(1, [(6, False, 2), (5, False, 2)], [(6, 1, 2), (5, 1, 2), (FINAL, 1, 2)])}) \
        == (9, True, (0, None, 9))
