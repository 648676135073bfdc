"""Incremental snapshots of keyed state: an epoch's snapshot of a state
whose operator tracks its writes (the built-in aggregates; a user's
operator through `track_writes`/`written`) holds only the keys written or
deleted since the epoch before, on a whole base; the store reads a kept
epoch back through its chain.

Exactness against a reference replayed in plain dicts: real runs (one
kernel, in this process) fail at a random record, every complete epoch the
store keeps is read back and compared with the reference at its source's
position, and runs resumed from each of them (a second failure on the way)
end with the reference's results."""

from __future__ import annotations

import pickle
import sqlite3
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel import Dataflow, Operator, run
from kernel.dataflow._operator import Source
from state import SnapshotStore, list_state, map_state, value_state

# the record number the tracked step fails at (None: never): not in the flow, whose fingerprint stays
_crash = {"at": None}


class Boom(Exception):
    pass


class Numbers(Source):
    """`records` in batches of `size`; its snapshot is its position. From
    record `paced` on, one batch an epoch (so that those batches are
    spread over many epochs, however fast the machine)."""

    def __init__(self, records: list, size: int, paced: int) -> None:
        self.records, self.size, self.paced, self.position = records, size, paced, 0
        self.epoch_passed = False

    def poll(self):
        if self.position >= len(self.records):
            return False
        if self.position >= self.paced:
            if not self.epoch_passed:
                return None  # (woken by the next epoch)
            self.epoch_passed = False
        batch = self.records[self.position:self.position + self.size]
        self.position += len(batch)
        self.emit(batch)
        return True

    def on_epoch(self, epoch):
        self.epoch_passed = True
        self.wake()
        return self.position

    def restore(self, snapshot):
        self.position = snapshot


def apply_record(values: dict, maps: dict, lists: dict, record) -> None:
    """What `Tracked` does with a record, on plain dicts (the reference too)."""
    key, value, _ = record
    if value % 5 == 0:  # deleted
        values.pop(key, None)
        maps.pop(key, None)
        lists.pop(key, None)
    else:
        values[key] = value
        maps.setdefault(key, {})[value % 3] = value  # changed in place
        lists.setdefault(key, []).append(value)  # changed in place


class Tracked(Operator):
    """A user's operator whose keyed states track their writes and deletes."""

    def open(self, context):
        self.values, self.maps, self.lists = (value_state(self, "values"), map_state(self, "maps"),
                                              list_state(self, "lists"))
        for state in (self.values, self.maps, self.lists):
            state.track_writes()

    def on_batch(self, port, batch):
        for record in batch:
            if record[2] == _crash["at"]:
                raise Boom(record)
            key, value, _ = record
            if value % 5 == 0:
                self.values.pop(key, None)
                self.maps.pop(key, None)
                self.lists.pop(key, None)
            else:
                self.values[key] = value
                self.maps.entry(key)[value % 3] = value
                self.lists.append(key, value)
        for state in (self.values, self.maps, self.lists):
            state.written(batch, pairs=True)

    def on_end(self):
        self.emit([("values", dict(self.values)), ("maps", self.maps.snapshot()),
                   ("lists", self.lists.snapshot())])


def _append(acc, value):
    acc.append(value)  # the accumulator changed in place
    return acc


def make_flow(records: list, size: int, paced: int | None = None):
    flow = Dataflow("incremental")
    paced = len(records) if paced is None else paced
    numbers = flow.source(lambda: Numbers(records, size, paced), name="numbers")
    keyed = numbers.key_by(lambda r: r[0]).map_values(lambda r: r[1])
    outputs = {"count": keyed.count(name="count").collect(name="counted"),
               "fold": keyed.fold(list, _append, name="fold").collect(name="folded"),
               "tracked": numbers.apply(Tracked, name="tracked").collect(name="tracked out")}
    steps = {node.name: node.id for node in flow.graph.nodes}
    return flow, outputs, steps


def reference(records: list) -> dict:
    """The states as of `records` (a source's position), replayed in plain dicts."""
    values, maps, lists = {}, {}, {}
    folded: dict = {}
    for record in records:
        apply_record(values, maps, lists, record)
        folded.setdefault(record[0], []).append(record[1])
    return {"count": dict(Counter(record[0] for record in records)), "fold": folded,
            "values": values, "maps": maps, "lists": lists}


def parts_at(state_dir, epoch: int) -> dict:
    """The one kernel's parts (by step) of the store's kept `epoch`, through its chain."""
    store = SnapshotStore(state_dir)
    try:
        [blob] = store.epoch_snapshots(epoch, 1)
    finally:
        store.close()
    return pickle.loads(blob)


def states_at(state_dir, epoch: int, steps: dict) -> tuple[int, dict]:
    """The source's position and the steps' states in the store's kept `epoch`."""
    parts = parts_at(state_dir, epoch)
    snapshot = {name: pickle.loads(parts[steps[name]])[4] for name in ("numbers", "count", "fold", "tracked")}
    return snapshot["numbers"], {"count": snapshot["count"]["accumulators"],
                                 "fold": snapshot["fold"]["accumulators"], **snapshot["tracked"]}


def kept_epochs(state_dir) -> list[int]:
    store = SnapshotStore(state_dir)
    try:
        return [epoch for epoch, final in store.completed() if not final]
    finally:
        store.close()


def fail_at(records, size, state_dir, at, paced=None) -> None:
    flow, _, _ = make_flow(records, size, paced)
    _crash["at"] = at
    try:
        with pytest.raises(Exception) as caught:
            run(flow, state_dir=state_dir, epoch_interval=0.001)
        assert "Boom" in repr(caught.value) or isinstance(caught.value.__cause__, Boom), caught.value
    finally:
        _crash["at"] = None


def assert_kept_epochs_exact(records, size, state_dir, epochs=None) -> list[int]:
    _, _, steps = make_flow(records, size)
    kept = kept_epochs(state_dir)
    for epoch in kept if epochs is None else epochs:
        position, states = states_at(state_dir, epoch, steps)
        assert states == reference(records[:position]), f"epoch {epoch} (position {position})"
    return kept


def resume_to_the_end(records, size, state_dir) -> None:
    flow, outputs, _ = make_flow(records, size)
    run(flow, state_dir=state_dir, epoch_interval=0.001)
    want = reference(records)
    assert dict(outputs["count"].items) == want["count"]
    assert dict(outputs["fold"].items) == want["fold"]
    assert dict(outputs["tracked"].items) == {name: want[name] for name in ("values", "maps", "lists")}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.sampled_from([3, 40, 400]), n=st.integers(300, 1500), size=st.integers(1, 9),
       first=st.floats(0.2, 0.6), second=st.floats(0.65, 0.95), older=st.booleans(),
       paced=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_every_kept_epoch_reads_back_exact_and_resumes_exact(tmp_path_factory, keys, n, size, first, second,
                                                             older, paced, seed):
    import random

    rng = random.Random(seed)
    records = [(f"k{rng.randrange(keys)}", rng.randrange(100), i) for i in range(n)]
    state_dir = tmp_path_factory.mktemp("state")
    paced = max(int(n * paced), n - 20 * size)  # (at most 20 epochs of one batch)
    fail_at(records, size, state_dir, int(n * first), paced)
    kept = assert_kept_epochs_exact(records, size, state_dir)
    if older and len(kept) > 1:  # resume the older kept epoch: the newer one abandoned
        store = SnapshotStore(state_dir)
        try:
            store.discard_after(kept[-1])
        finally:
            store.close()
    fail_at(records, size, state_dir, int(n * second), paced)  # resumed, and failed again
    assert_kept_epochs_exact(records, size, state_dir)
    resume_to_the_end(records, size, state_dir)


def _rows(state_dir) -> list[tuple[int, int, bool]]:
    db = sqlite3.connect(state_dir / "snapshots.sqlite")
    try:
        deltas = {epoch for (epoch,) in db.execute("SELECT epoch FROM deltas")}
        return [(epoch, size, epoch in deltas) for epoch, size in
                db.execute("SELECT epoch, length(blob) FROM snapshots WHERE epoch < 1000000 ORDER BY epoch")]
    finally:
        db.close()


def test_an_epoch_that_changed_few_keys_of_many_writes_only_those(tmp_path):
    """5,000 keys, then a trickle of records on seven: the epochs of the
    trickle are deltas, each a small fraction of a whole snapshot (the
    seven keys' values whole: the fold's and the list state's lists);
    every epoch the store kept reads back exact, and so does every link
    kept for their chains, back to the base."""
    records = [(f"k{i}", 1, i) for i in range(5000)] + [(f"k{i % 7}", 2, 5000 + i) for i in range(45)]
    fail_at(records, 3, tmp_path, 5040, paced=5000)
    rows = _rows(tmp_path)
    assert rows[0][2] is False  # (the chain's base, kept for the epochs built on it)
    assert [epoch for epoch, _, _ in rows] == list(range(rows[0][0], rows[-1][0] + 1))
    _, _, steps = make_flow(records, 3)
    store = SnapshotStore(tmp_path)
    try:
        whole = {epoch: store.read(epoch, 0, 1) for epoch, _, _ in rows}  # (each through its chain)
    finally:
        store.close()
    position = {epoch: pickle.loads(pickle.loads(blob)[steps["numbers"]])[4] for epoch, blob in whole.items()}
    trickle = [(epoch, size) for epoch, size, delta in rows if delta and position.get(epoch - 1, 0) >= 5000]
    assert trickle, (rows, position)
    assert all(size * 10 < len(whole[epoch]) for epoch, size in trickle), (trickle, rows)
    assert_kept_epochs_exact(records, 3, tmp_path)


def test_a_corrupt_link_falls_back_to_an_epoch_whose_chain_is_intact(tmp_path, caplog):
    """A delta in the chain of both newest kept epochs fails its checksum:
    neither reads back, and the run falls back to the third epoch the
    store keeps for that (the newest before their chain's base: its own
    chain shares nothing with theirs), saying so, with exact results.
    What a cluster's process offers (`failing`) names both epochs too."""
    from state._generations import failing

    # (30 paced epochs: past the second base, at epoch 1 + CHAIN, so that the
    # two newest are deltas on it and the fallback is the epoch before it)
    records = [(f"k{i}", 1, i) for i in range(5000)] + [(f"k{i % 7}", 2, 5000 + i) for i in range(90)]
    fail_at(records, 3, tmp_path, 5084, paced=5000)
    rows = _rows(tmp_path)
    kept = sorted(kept_epochs(tmp_path))
    assert len(kept) == 3, (kept, rows)
    fallback, newest = kept[0], kept[1:]
    link = next(epoch for epoch, _, delta in rows if delta and fallback < epoch < newest[0])  # both need it
    db = sqlite3.connect(tmp_path / "snapshots.sqlite")
    db.execute("UPDATE snapshots SET crc = crc + 1 WHERE epoch = ?", (link,))
    db.commit()
    db.close()
    assert {(epoch, 0, 1) for epoch in newest} <= failing(tmp_path, {None: "snapshots.sqlite"}, kept[::-1])
    store = SnapshotStore(tmp_path)
    try:
        with caplog.at_level("WARNING", logger="kernel.state"):
            assert store.latest()[0] == fallback
    finally:
        store.close()
    assert "chain of deltas" in caplog.text and f"at epoch {link} fails its checksum" in caplog.text
    assert_kept_epochs_exact(records, 3, tmp_path, [fallback])
    resume_to_the_end(records, 3, tmp_path)


def test_a_store_written_before_deltas_resumes(tmp_path):
    """A state_dir of whole snapshots only, without the deltas table (as an
    earlier version left it), is read as bases."""
    records = [(f"k{i % 50}", i % 100, i) for i in range(2000)]
    fail_at(records, 3, tmp_path, 1500)
    db = sqlite3.connect(tmp_path / "snapshots.sqlite")
    kept = kept_epochs(tmp_path)
    # every kept epoch whole, as an earlier version wrote them
    store = SnapshotStore(tmp_path)
    wholes = {epoch: store.epoch_snapshots(epoch, 1)[0] for epoch in kept}
    store.close()
    db.execute("DELETE FROM snapshots WHERE epoch < ?", (1_000_000,))
    for epoch, blob in wholes.items():
        import zlib

        db.execute("INSERT INTO snapshots VALUES (?, 0, 1, ?, ?)", (epoch, zlib.crc32(blob), blob))
    db.execute("DROP TABLE deltas")
    db.commit()
    db.close()
    assert_kept_epochs_exact(records, 3, tmp_path)
    resume_to_the_end(records, 3, tmp_path)


class Nested(Tracked):
    """Tracked states under an on_epoch of the operator's own (nested in its
    snapshot, where the store would not find deltas): always whole."""

    def on_epoch(self, epoch):
        return {"states": super().on_epoch(epoch), "mine": 1}

    def restore(self, snapshot):
        super().restore(snapshot["states"])


def test_tracked_states_under_an_operators_own_on_epoch_are_snapshotted_whole(tmp_path):
    records = [(f"k{i % 40}", i % 100, i) for i in range(1500)]
    flow = Dataflow("nested")
    numbers = flow.source(lambda: Numbers(records, 3, 1200), name="numbers")
    out = numbers.apply(Nested, name="tracked").collect()
    run(flow, state_dir=tmp_path, epoch_interval=0.001)
    want = reference(records)
    assert dict(out.items) == {name: want[name] for name in ("values", "maps", "lists")}
    assert not any(delta for _, _, delta in _rows(tmp_path))
    steps = {node.name: node.id for node in flow.graph.nodes}
    for epoch in kept_epochs(tmp_path):
        parts = parts_at(tmp_path, epoch)
        position = pickle.loads(parts[steps["numbers"]])[4]
        snapshot = pickle.loads(parts[steps["tracked"]])[4]["states"]
        assert snapshot == {name: reference(records[:position])[name] for name in ("values", "maps", "lists")}


class Tally:
    """A fold's accumulator of a class of this module's (renamed in the test)."""

    def __init__(self):
        self.n = 0

    def add(self, value):
        self.n += value
        return self


def test_a_chain_holding_a_class_renamed_since_is_refused_saying_so(tmp_path, monkeypatch):
    records = [(f"k{i % 500}", i % 100, i) for i in range(1100)]
    make, add = Tally, Tally.add  # (the class itself, under the name it loses)

    def tallies():
        flow = Dataflow("tallies")
        numbers = flow.source(lambda: Numbers(records, 3, 1000), name="numbers")
        numbers.key_by(lambda r: r[0]).map_values(lambda r: r[1]).fold(make, add, name="tally").collect()
        numbers.apply(Tracked, name="tracked").collect()
        return flow

    _crash["at"] = 1090
    try:
        with pytest.raises(Exception, match="Boom"):
            run(tallies(), state_dir=tmp_path, epoch_interval=0.001)
    finally:
        _crash["at"] = None
    assert _rows(tmp_path)[-1][2]  # (the newest kept epoch is a delta)
    monkeypatch.delattr(__import__(__name__), "Tally")
    from state import StateError

    with pytest.raises(StateError, match=r"is a base and the deltas after it .* does not read back "
                                         r"\(AttributeError.*give it back its name to resume"):
        run(tallies(), state_dir=tmp_path, epoch_interval=0.001)
