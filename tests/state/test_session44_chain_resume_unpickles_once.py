"""A resume from a chain of incremental snapshots (a base and the deltas
after it) reads the base's keyed state once: the store hands the run the
parts it patched, unpickled, instead of pickling them again for the run to
unpickle at once (which made a chain's resume cost 2.7 times a whole
snapshot's). Counted exactly: every accumulator of the fold is a `Tally`
whose unpickling counts itself; the resumed run unpickles as many as the
chain's snapshots hold (the base's and each delta's), no more."""

from __future__ import annotations

import pickle
import sqlite3

import pytest

from kernel import Dataflow, run
from state import SnapshotStore
from tests.state.test_session44_incremental_snapshots import Numbers

_revived = {"count": 0}
_crash = {"at": None}  # the record number the source fails at (None: never)


def _revive(total):
    _revived["count"] += 1
    return Tally(total)


class Tally:
    def __init__(self, total: int = 0) -> None:
        self.total = total

    def __reduce__(self):
        return _revive, (self.total,)


def _add(tally: Tally, value: int) -> Tally:
    tally.total += value  # (changed in place: the key is tracked as written)
    return tally


class Boom(Exception):
    pass


class Paced(Numbers):
    """The incremental tests' `Numbers` in batches of 1 (from record `paced`
    on, one batch an epoch: a chain of deltas), failing at record
    `_crash["at"]`."""

    def __init__(self, records: list, paced: int) -> None:
        super().__init__(records, 1, paced)

    def poll(self):
        if self.position == _crash["at"]:
            raise Boom(self.position)
        return super().poll()


def make_flow(records: list, paced: int):
    flow = Dataflow("chain resume")
    keyed = flow.source(lambda: Paced(records, paced), name="numbers").key_by(lambda r: r[0])
    totals = keyed.map_values(lambda r: r[1]).fold(Tally, _add, name="fold").collect(name="totals")
    return flow, totals


def unpickled_in(blobs: list[bytes]) -> int:
    """How many `Tally` the snapshots `blobs` hold, every part unpickled."""
    _revived["count"] = 0
    for blob in blobs:
        for part in pickle.loads(blob).values():
            if isinstance(part, bytes):
                pickle.loads(part)
    return _revived["count"]


def test_a_resume_from_a_chain_unpickles_the_base_s_state_once(tmp_path):
    records = [(f"k{i}", i, i) for i in range(300)] + [(f"k{i % 3}", 1, 300 + i) for i in range(40)]
    flow, _ = make_flow(records, paced=300)
    _crash["at"] = 330
    try:
        with pytest.raises(Exception) as caught:
            run(flow, state_dir=tmp_path, epoch_interval=0.001)
        assert "Boom" in repr(caught.value) or isinstance(caught.value.__cause__, Boom), caught.value
    finally:
        _crash["at"] = None
    store = SnapshotStore(tmp_path)
    try:
        # the newest kept epoch built on a base and deltas (of the two newest, one at least)
        kept = [epoch for epoch, final in store.completed() if not final]
        epoch = next(epoch for epoch in kept if len(store._chain(epoch, 0, 1)) > 2)
        chain = store._chain(epoch, 0, 1)
        store.discard_after(epoch)
    finally:
        store.close()
    db = sqlite3.connect(tmp_path / "snapshots.sqlite")
    try:
        blobs = [bytes(db.execute("SELECT blob FROM snapshots WHERE epoch = ? AND kernel = 0", (link,)
                                  ).fetchone()[0]) for link in chain]
    finally:
        db.close()
    in_chain = unpickled_in(blobs)
    assert in_chain > 300  # (the base's 300 keys at least, and each delta's)

    _revived["count"] = 0
    flow, totals = make_flow(records, paced=300)
    run(flow, state_dir=tmp_path, epoch_interval=0.001)
    assert _revived["count"] == in_chain  # (the whole part unpickled again: 300 more)
    want: dict = {}
    for key, value, _ in records:
        want[key] = want.get(key, 0) + value
    assert {key: tally.total for key, tally in totals.items} == want
