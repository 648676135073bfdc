"""Review of incremental snapshots (session 44): the epoch tracker's choice
of bases and the store's retention together, over a long run of epochs
that change few keys (the tracker's `durable` writes to a real store, as
the coordinator does), and a resume from the oldest kept epoch."""

from __future__ import annotations

import pickle

from kernel.runtime._epochs import CHAIN, EpochTracker
from state import SnapshotStore
from state._keyed import KeyedDelta

KEYS = 2000


def part(whole: dict, changed: dict, base: bool) -> bytes:
    """One instance's part as `Instance.snapshot_part` pickles it (its last
    item the operator's snapshot: a state whole, or a delta)."""
    return pickle.dumps(("count", {"s": dict(whole) if base else KeyedDelta(changed, [])}), protocol=5)


def run_epochs(store: SnapshotStore, epochs: int, state: dict, first: int = 1, kernel: int = 0,
               changes: int = 3) -> list[int]:
    """`epochs` epochs of one kernel of one instance, each changing `changes`
    keys of `state`; every epoch made durable and complete at once. The
    rows the store holds after each."""
    def durable(epoch, blob):
        store.write(epoch, kernel, blob)
        store.mark_complete(epoch)

    tracker = EpochTracker(1, durable, lambda blob: None, first_epoch=first, deltas=True)
    rows = []
    for _ in range(epochs):
        epoch = tracker.take_epoch()
        changed = {f"k{(epoch * changes + i) % len(state)}": epoch for i in range(changes)}
        state.update(changed)
        tracker.part(0, epoch, part(state, changed, tracker.is_base(epoch)))
        [(count,)] = store._query("SELECT count(*) FROM snapshots", ())
        rows.append(count)
    return rows


def read_back(store: SnapshotStore, epoch: int) -> dict:
    [blob] = store.epoch_snapshots(epoch, 1)
    return pickle.loads(pickle.loads(blob)[0])[-1]["s"]


def test_a_long_run_of_small_deltas_keeps_a_bounded_number_of_snapshots(tmp_path):
    """300 epochs, 3 keys of 2,000 changed in each: bases every CHAIN epochs
    (the deltas never add up to a base), and the store never holds more
    than two chains and the epoch before (a third kept for the two newest),
    every kept epoch reading back as the state was then."""
    store = SnapshotStore(tmp_path)
    store.claim("flow", 1, "layout")
    try:
        state = {f"k{i}": 0 for i in range(KEYS)}
        rows = run_epochs(store, 300, state)
        assert max(rows) <= 2 * CHAIN + 1, max(rows)
        kept = [epoch for epoch, _ in store.completed()]
        assert kept[:2] == [300, 299] and len(kept) == 3, kept
        assert read_back(store, 300) == state
        # a resume from the oldest kept epoch: the newer ones abandoned,
        # its chain intact, and the run goes on from there
        oldest = kept[-1]
        replay = {f"k{i}": 0 for i in range(KEYS)}
        for epoch in range(1, oldest + 1):
            replay.update({f"k{(epoch * 3 + i) % KEYS}": epoch for i in range(3)})
        assert read_back(store, oldest) == replay
        store.discard_after(oldest)
        assert read_back(store, oldest) == replay
        more = run_epochs(store, 150, replay, first=oldest + 1)
        assert max(more) <= 2 * CHAIN + 1, max(more)
        assert read_back(store, oldest + 150) == replay
    finally:
        store.close()
