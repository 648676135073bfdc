"""Review of incremental snapshots (session 44): a generation's first
epochs are one chain (a base and the deltas on it), so two complete epochs
of a new generation are no longer two independent snapshots. A run resumed
on another shape (a new generation's files) kept the older generation only
until its own second complete epoch: a corrupt base of the new chain then
left nothing to fall back to."""

from __future__ import annotations

import sqlite3
import textwrap
from collections import Counter

from tests.state.test_cluster_recovery import complete_epochs, finish, run_alone, start_cluster, visible_lines

N = 3000
# A count over 1,000 keys, then a slow trickle on three: after a base, an
# epoch's snapshot is a small delta on it (whole every epoch, as windows
# are, the chains had been a base and a delta or two)
PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    N = int(os.environ["N"])
    OUT = os.environ["OUT"]
    EVERY = 100 if os.environ.get("RUN") == "resumed" else 20

    def slow(x):
        if x >= 1000 and x % EVERY in (0, 1):  # on both kernels
            time.sleep(0.004)
        return x

    flow = Dataflow("generations_review")
    numbers = flow.from_iterable(range(N), batch_size=25).map(slow)
    numbers.key_by(lambda x: x if x < 1000 else x % 3).count().to_files(os.path.join(OUT, "counts"))
    """
)


def test_an_older_generation_stays_until_the_new_one_has_an_intact_fallback(tmp_path):
    """One process of two kernels, killed once an epoch is complete; a cluster
    of 2 processes resumes it in a new generation (a base, then deltas),
    killed at its third snapshot. The new generation's complete epochs all
    need its first base: corrupt it, and the next run falls back to the
    older generation's epoch (it was retired, and the run started afresh)."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    state = tmp_path / "state"
    first = run_alone(tmp_path, state, 2, crash="committed:1@1")
    assert first.returncode != 0, "the crash point was never reached"
    [(old, _), *_] = complete_epochs(state / "snapshots.sqlite")
    results = finish(start_cluster(tmp_path, shared=True, crash=(1, "snapshot:4@1")))
    assert all(code != 0 for code, _ in results), results
    [new] = [path for path in state.glob("snapshots-e*-process0.sqlite")]
    epochs = complete_epochs(new)
    assert len(epochs) >= 2, epochs
    db = sqlite3.connect(new)
    try:
        [(base,)] = db.execute("SELECT min(epoch) FROM snapshots WHERE kernel = 0").fetchall()
        assert all(db.execute("SELECT 1 FROM deltas WHERE epoch = ?", (e,)).fetchall() for e, _ in epochs
                   if e != base), "the new generation's kept epochs are not one chain: nothing to attack"
        db.execute("UPDATE snapshots SET crc = crc + 1 WHERE epoch = ? AND kernel = 0", (base,))
        db.commit()
    finally:
        db.close()
    assert (state / "snapshots.sqlite").exists(), "the older generation was retired"
    results = finish(start_cluster(tmp_path, shared=True, resumed=True))
    assert [code for code, _ in results] == [0, 0], results
    assert any(f"resuming from epoch {old}\n" in err for _, err in results), results
    want = Counter(x if x < 1000 else x % 3 for x in range(N))
    assert sorted(map(tuple, visible_lines(tmp_path / "out" / "counts"))) == sorted(want.items())
