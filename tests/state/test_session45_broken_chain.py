"""A store whose record of which snapshots are deltas is damaged.

Found by flipping random bytes of a killed run's snapshots.sqlite: a row
of its `deltas` table (which no checksum covers) changed, so a delta was
taken for the whole snapshot its chain starts at, and the resumed run
stopped with "a step's keyed state in them does not read back
(AttributeError: 'KeyedDelta' object has no attribute 'update'): every
class in it must be importable under the name it had ... (a class renamed
or moved since ...)": no class had moved. The chain is broken, as when a
link fails its checksum: the run falls back to an epoch whose chain is
intact, saying why, and the output holds every record once."""

from __future__ import annotations

import sqlite3

from tests._crash_runs import run_cli, visible_lines

PIPELINE = """
import os, time
from kernel import Dataflow

def slow(n):
    time.sleep(0.0003)  # (a few keys an epoch: its counts' snapshots are deltas)
    return n

flow = Dataflow("broken chain")
flow.from_iterable(range(6000)).map(slow).key_by(lambda n: n % 3000).count().to_files(os.environ["OUT"])
"""


def _killed_damaged_resumed(tmp_path, damage) -> tuple[str, int, object]:
    """A run killed at its 30th snapshot (bases at epochs 1 and 21: by
    number), `damage(db, newest complete epoch, kernel 0's delta epochs)`
    done to its store, then resumed: the resumed run's stderr, the newest
    epoch and what `damage` returned. The resumed run ends well and its
    output holds every count exact."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    out = tmp_path / "out"
    killed = run_cli(tmp_path, 1, "snapshot:30", OUT=out)
    assert killed.returncode != 0, killed.stderr
    db = sqlite3.connect(tmp_path / "state" / "snapshots.sqlite")
    try:
        [(newest,)] = db.execute("SELECT max(epoch) FROM complete")
        deltas = {e for (e,) in db.execute("SELECT epoch FROM deltas WHERE kernel = 0")}
        with db:
            damaged = damage(db, newest, deltas)
    finally:
        db.close()

    resumed = run_cli(tmp_path, 1, None, OUT=out)
    assert resumed.returncode == 0, resumed.stderr
    assert "falling back to the previous complete epoch" in resumed.stderr
    counts: dict = {}
    for key, count in visible_lines(out):
        counts[key] = max(counts.get(key, 0), count)
    assert counts == {key: 2 for key in range(3000)}
    return resumed.stderr, newest, damaged


def test_a_delta_taken_for_its_chains_base_falls_back_to_an_intact_epoch(tmp_path):
    def damage(db, newest, deltas):
        base = max(e for (e,) in db.execute("SELECT epoch FROM snapshots") if e <= newest and e not in deltas)
        inside = sorted(e for e in deltas if base < e < newest)
        assert inside, (base, newest, sorted(deltas))
        db.execute("DELETE FROM deltas WHERE epoch = ?", (inside[0],))  # (as a changed row reads)
        return inside[0]

    said, newest, first = _killed_damaged_resumed(tmp_path, damage)
    assert (f"snapshot at epoch {newest} cannot be built from epochs {first} to {newest}: the snapshot "
            "its chain starts at holds a delta") in said


def test_the_newest_delta_without_its_row_falls_back_to_an_intact_epoch(tmp_path):
    """The newest epoch's own row lost: its delta read as a whole snapshot
    (a chain of one), and the resumed run stopped in the count's restore,
    "TypeError: 'KeyedDelta' object is not iterable"."""
    def damage(db, newest, deltas):
        assert newest in deltas, (newest, sorted(deltas))
        db.execute("DELETE FROM deltas WHERE epoch = ?", (newest,))

    said, newest, _ = _killed_damaged_resumed(tmp_path, damage)
    assert (f"snapshot at epoch {newest} holds deltas, and the store has no record of the chain they apply "
            "to") in said
