"""Session 34's review of topics between jobs: real processes (a
coordinator, the publishing and subscribing jobs), each case compared
with what a plain reference says the subscriber must get."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import wait_until
from test_topics import Job, _no_job_left, brute_sums, coordinator, results, system  # noqa: F401  (fixtures)


def test_a_subscriber_connected_before_a_job_with_snapshots_released_anything_gets_its_first_epoch(system):  # noqa: F811
    """A job with a state_dir publishes nothing before its first epoch is
    complete. B connects after A has made its readings but before that
    epoch went out: nothing was published before it joined, so it gets
    them all, from epoch 1 (it was held for the next boundary, as if the
    readings had gone out already, started at epoch 2 and got none)."""
    hold = system.root / "hold"
    a = Job(system, "readings.py", "a", COUNT=200, HOLD=hold, STATE_DIR=system.root / "state", JOB_EPOCH=2)
    wait_until(lambda: "holding" in a.text() or a.proc.poll() is not None, what="A to make its readings")
    b = Job(system, "sums.py", "b")
    wait_until(lambda: "a subscriber connected" in a.text() or b.proc.poll() is not None, what="B to connect")
    wait_until(lambda: "epoch 1 ends after" in a.text() or a.proc.poll() is not None, what="A's first epoch")
    log = a.text()
    # (the case: B was there before anything went out, and A had made its readings)
    assert log.index("holding") < log.index("a subscriber connected") < log.index("epoch 1 ends after"), log
    hold.touch()
    seqs, sums = results(b)
    assert a.finish()[-1].startswith("ended")
    assert seqs == list(range(200)), b.text()
    assert sums == brute_sums(seqs)
    assert "starts at epoch 1" in b.text()

