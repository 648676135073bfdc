"""Review of incremental snapshots (session 44): attacks on what the
change's own tests leave out. A user's operator that tracks its writes but
forgets to tell its state some of them; a run on several kernels resumed
from a delta epoch on another number of kernels."""

from __future__ import annotations

import pickle
import sqlite3
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, Operator, run
from state import SnapshotStore, list_state, map_state, value_state
from tests.state.test_session44_incremental_snapshots import Numbers


class Forgetful(Operator):
    """Tracks its state's writes (a value of None deletes), but after the
    first 3,000 records tells it only of the even batches' keys."""

    def open(self, context):
        self.values = value_state(self, "values")
        self.values.track_writes()
        self.batches = 0

    def on_batch(self, port, batch):
        for key, value, _ in batch:
            if value is None:
                del self.values[key]
            else:
                self.values[key] = value
        self.batches += 1
        if batch[0][2] < 3000 or self.batches % 2 == 0:
            self.values.written(batch, pairs=True)

    def on_end(self):
        self.emit(sorted(self.values.items()))


def forgetful_flow(records):
    flow = Dataflow("forgetful")
    numbers = flow.source(lambda: Numbers(records, 1, 3000), name="numbers")
    return flow, numbers.apply(Forgetful, name="forgetful").collect()


@pytest.mark.parametrize("then", ["added", "deleted"])
def test_a_write_the_operator_did_not_report_is_refused_not_lost(tmp_path, then):
    """3,000 keys, then one batch an epoch adding a key (or deleting one),
    half of them never reported. Without a check the deltas left those
    out, and a resume silently lost them (3,038 keys of 3,050 read back
    at the kept epoch); the snapshot is refused instead, naming the step
    and the state, and saying what to do."""
    more = [(f"k{3000 + i}", i, 3000 + i) if then == "added" else (f"k{i}", None, 3000 + i)
            for i in range(60)]
    flow, _ = forgetful_flow([(f"k{i}", i, i) for i in range(3000)] + more)
    with pytest.raises(Exception, match=rf"forgetful.*keyed state 'values': \d+ keys {then} since the last "
                                        r"epoch, \d+ told to written\(\) after track_writes\(\): a snapshot "
                                        r"would lose the rest. Call written\(keys\) after every batch"):
        run(flow, state_dir=tmp_path, epoch_interval=0.001)


# -- a tracked state's deltas, applied in order, are its whole snapshots ---------------

_OPS = st.lists(st.tuples(st.sampled_from(["set", "del", "append", "mutate", "clear", "restore", "epoch",
                                           "batch"]),
                          st.sampled_from(["a", "b", "c", "é", "🔑", 1, (1, 2)]), st.integers(0, 9)),
                max_size=60)


@settings(max_examples=300, deadline=None)
@given(ops=_OPS, kind=st.sampled_from(["value", "map", "list"]), pairs=st.booleans())
def test_deltas_applied_in_order_make_every_epochs_whole_snapshot(ops, kind, pairs):
    """Random writes, deletes, deletes then writes again, in-place changes
    of a value, clear() and restore() between epochs: every epoch's
    snapshot, applied to the one before (the store's `materialise`), is
    the state as it is (a plain copy). Keys are reported a batch at a
    time, as the aggregates do, unicode and tuples among them."""
    from state._keyed import KeyedDelta

    class Owner(Operator):
        pass

    owner = Owner()
    make = {"value": value_state, "map": map_state, "list": list_state}[kind]
    state = make(owner, "s")
    state.track_writes()
    chained: dict = {}
    batch: list = []
    for op, key, n in [*ops, ("epoch", None, 0)]:
        if op == "set":
            state[key] = {n: n} if kind == "map" else [n] if kind == "list" else n
            batch.append(key)
        elif op == "del" and key in state:
            del state[key]
            batch.append(key)
        elif op in ("append", "mutate"):  # changed in place
            if kind == "list":
                state.append(key, n)
            elif kind == "map":
                state.entry(key)[n] = n
            elif isinstance(state.get(key), list):
                state[key].append(n)  # (a fold's accumulator)
            else:
                state[key] = [n] if op == "append" else n
            batch.append(key)
        elif op == "clear":
            state.clear()
        elif op == "restore":
            state.restore({key: {n: n} if kind == "map" else [n] if kind == "list" else n})
        elif op == "batch" or op == "epoch":
            if batch:
                state.written([(k, None) for k in batch] if pairs else batch, pairs)
                batch = []
            if op == "epoch":
                snapshot = pickle.loads(pickle.dumps(state.epoch_snapshot()))
                if isinstance(snapshot, KeyedDelta):
                    chained = snapshot.applied_to(chained)
                else:
                    chained = snapshot
                assert chained == state.snapshot()


# -- a kernel whose sources have ended takes no epochs: its chains still have a base ----


class OnKernelZero(Numbers):
    """`Numbers` on kernel 0 only (kernel 1's share is empty: it ends at once)."""

    def open(self, context):
        self.mine = context.index == 0

    def poll(self):
        return super().poll() if self.mine else False


def test_a_kernel_without_live_sources_writes_chains_with_a_base(tmp_path):
    """Kernel 1 has no live source, so it takes no epoch: its count step
    aligns on kernel 0's markers. It took none as a base, so every one of
    its snapshots was a delta on nothing, and no complete epoch read back
    (CorruptSnapshot: 'is a delta and no whole snapshot before it'): a
    crash would have started the run afresh. Every kept epoch reads back
    now, with kernel 1's count the records it owns up to the position."""
    records = [f"k{i % 2000}" for i in range(2000)] + [f"k{i % 7}" for i in range(100)]
    flow = Dataflow("kernel zero")
    source = flow.source(lambda: OnKernelZero(records, 5, 2000), name="src")
    out = source.key_by(lambda w: w).count(name="count").collect()
    steps = {node.name: node.id for node in flow.graph.nodes}
    run(flow, cores=2, state_dir=tmp_path, epoch_interval=0.02)  # (kernel 1 ends before its first)
    assert dict(out.items) == dict(Counter(records))
    db = sqlite3.connect(tmp_path / "snapshots.sqlite")
    try:
        assert db.execute("SELECT count(*) FROM deltas WHERE kernel = 1").fetchone()[0], "no deltas"
    finally:
        db.close()
    store = SnapshotStore(tmp_path)
    try:
        for epoch, final in store.completed():
            if not final:
                blobs = store.epoch_snapshots(epoch, 2)
                position = pickle.loads(pickle.loads(blobs[0])[steps["src"]])[4]
                counts = Counter()
                for blob in blobs:
                    counts.update(pickle.loads(pickle.loads(blob)[steps["count"]])[4]["accumulators"])
                assert counts == Counter(records[:position]), epoch
    finally:
        store.close()


def test_an_epoch_first_met_by_a_snapshot_is_decided_as_one_taken():
    """The tracker of a kernel that takes no epochs (above), deterministically:
    the first epoch it meets is a base, and the next ones follow the rule."""
    from kernel.runtime._epochs import EpochTracker

    tracker = EpochTracker(1, lambda epoch, blob: None, lambda blob: None, first_epoch=7, deltas=True)
    assert tracker.is_base(7) and not tracker.is_base(8)
    assert tracker.is_base(7)  # (asked again: decided once)
