"""Session 41: what a waiting subscriber's log says of the epochs it did not
get from a publisher listed again (stopped past the coordinator's heartbeat
and checks, taken out of the catalog, then its registration said again) is
what happened, when no epoch of it had reached the subscriber before.

The subscriber carried the publisher's server to its next generation only
for a partition with an epoch had (`Subscribe._same_again`): reached before
any epoch came, the same server was read as another's, and the epochs the
publisher (snapshots, retain_bytes=1) no longer kept for it were said to be
missing because "the restarted publisher no longer had them", of a
publisher that never restarted. It says the publisher no longer kept them
while the subscriber's connection was broken.

Real processes: a coordinator of its own (its heartbeat short), readings.py
and sums.py (test_topics' helpers)."""

from __future__ import annotations

import re
import signal

from _relisted import HEARTBEATS, readings_system, taken_out
from test_topics import (  # noqa: F401  (fixtures, and what kills the jobs a test started)
    Job,
    _no_job_left,
    brute_sums,
    results,
    starts,
    wait_until,
)

COUNT = 3000  # readings: 3 s of them at readings.py's rate, until `go`
MISSED = r"partition 0: epochs (\d+) to (\d+) were not delivered \(([^)]*)\)"


def test_a_publisher_listed_again_before_any_epoch_reached_the_subscriber_is_not_called_restarted(tmp_path):
    system = readings_system(tmp_path)
    try:
        go, hold, wait = tmp_path / "go", tmp_path / "hold", tmp_path / "wait"
        # (no reading until `wait` exists; epochs every JOB_EPOCH s, snapshots kept: what it
        # keeps for a subscriber away goes at once, retain_bytes=1)
        a = Job(system, "readings.py", "a", COUNT=COUNT, GO=go, HOLD=hold, WAIT=wait,
                STATE_DIR=tmp_path / "state", RESUMABLE=1, RETAIN_BYTES=1, JOB_EPOCH=1, EPOCH=1,
                **HEARTBEATS)
        a.wait_published()
        b = Job(system, "sums.py", "b", ON_LOST="wait", TIMEOUT=60, **HEARTBEATS)
        wait_until(lambda: starts(b)[0] or b.proc.poll() is not None, what="B to reach A")
        with taken_out(a, b):
            # B held while A, listed again, goes on past an epoch it keeps for B no longer
            b.proc.send_signal(signal.SIGSTOP)
            try:
                wait.touch()  # (its readings from now: epochs of some bytes)
                a.proc.send_signal(signal.SIGCONT)
                wait_until(lambda: "is no longer kept for the subscribers away" in a.text(), timeout=30,
                           what="A to drop what B lacks")
            finally:
                b.proc.send_signal(signal.SIGCONT)
        assert b.epochs_received() == 0, "an epoch of A reached B before A was stopped"
        wait_until(lambda: len(starts(b)[0]) >= 2 or b.proc.poll() is not None, what="B to read A again")
        go.touch()
        hold.touch()
        seqs, sums = results(b)
        assert b.proc.returncode == 0, b.text()[-2000:]
        log = b.text()
        assert "its publisher is listed again: reading it on" in log
        [(first, last, why)] = re.findall(MISSED, log)
        assert "restarted" not in why and why.startswith("the publisher no longer kept them while this "
                                                         "subscriber's connection was broken"), why
        # what it says it missed is what it did not get: from the end of the last of
        # them (A's epoch ends) to A's end, every reading once
        assert int(first) == starts(b)[0][0] and seqs == list(range(a.boundaries()[int(last)], COUNT))
        assert sums == brute_sums(seqs)
        assert a.finish()[-1].startswith("ended")
    finally:
        system.close()
