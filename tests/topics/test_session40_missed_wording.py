"""Session 40: what a waiting subscriber's log says of the epochs it did
not get (`Subscribe._started_at`, `_read_connection`) is what happened.

* Its connection alone broke (B stalled past the heartbeat: A dropped it)
  and A, with snapshots and retain_bytes, stopped keeping for it the epochs
  it lacked: its log said "the restarted publisher no longer had them", of
  a publisher that never restarted. It says the publisher no longer kept
  them while its connection was broken.

Real processes (test_topics' helpers): the module's coordinator, A
(readings.py) and B (sums.py, on_lost="wait")."""

from __future__ import annotations

import re

from test_topics import (  # noqa: F401  (fixtures, and what kills the jobs a test started)
    _no_job_left,
    _subscriber_dropped,
    brute_sums,
    coordinator,
    results,
    starts,
    system,
    wait_until,
)

MISSED = r"partition 0: epochs (\d+) to (\d+) were not delivered \(([^)]*)\)"


def _ended_and_dropped_after_the_cut(log: str) -> bool:
    """Whether A has dropped, for the subscribers away, an epoch that ended
    after it dropped B's link: one B never had. (The test waited for A's first
    "no longer kept": under load those were all epochs A had sent before
    the cut, which B, stalled, read from its socket afterwards; B was read
    again from the next epoch and missed nothing, and its log had no gap
    to word: 3 of 8 runs beside four CPU burners.)"""
    cut = log.find("dropping the link")
    if cut < 0:
        return False
    after = log[cut:]
    ended = set(re.findall(r"epoch (\d+) ends after", after))
    return bool(ended & set(re.findall(r"epoch (\d+) is no longer kept for the subscribers away", after)))


def test_epochs_dropped_while_only_the_connection_was_broken_are_not_blamed_on_a_restart(system):  # noqa: F811  (the fixture)
    # (retain_bytes=1: what A keeps for a subscriber away goes at once)
    a, b, go, fast = _subscriber_dropped(system, "wait", STATE_DIR=system.root / "state", RESUMABLE=1,
                                         RETAIN_BYTES=1)
    wait_until(lambda: _ended_and_dropped_after_the_cut(a.text()), what="A to drop an epoch B never had")
    fast.touch()
    wait_until(lambda: len(starts(b)[0]) >= 2 or b.proc.poll() is not None, what="B to read A again")
    go.touch()
    seqs, sums = results(b)
    a.finish()
    log = b.text()
    assert "the publisher still runs: reading it again" in log
    [(first, last, why)] = re.findall(MISSED, log)
    assert "restarted" not in why and why.startswith("the publisher no longer kept them while this "
                                                     "subscriber's connection was broken"), why
    # what it says it missed is the gap in what it got, to the reading (A's epoch ends)
    boundaries = {0: 0, **a.boundaries()}
    cut = next(i for i in range(1, len(seqs)) if seqs[i] != seqs[i - 1] + 1)
    before, after = seqs[:cut], seqs[cut:]
    assert before == list(range(before[0], boundaries[int(first) - 1]))
    assert after == list(range(boundaries[int(last)], 20_000))
    assert sums == brute_sums(seqs)
