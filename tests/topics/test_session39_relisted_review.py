"""Session 39 review: a publisher stopped past the coordinator's heartbeat
and checks is taken out of the catalog; once it runs again it says its
registration again, and a subscriber with on_lost="wait" that counted it
lost finds it listed again (`lookup(not_id=)`). That publisher is the same
one, not a new one: what the subscriber had whole of it must not come
twice (a retain publisher replays its retained epochs to every new
connection; read as a new publisher's, 410 of 6000 readings came twice).

Real processes: a coordinator of its own (its heartbeat short), readings.py
and sums.py (test_topics' helpers)."""

from __future__ import annotations

from _relisted import HEARTBEATS, System, readings_system, taken_out_and_back  # noqa: F401  (HEARTBEATS, System: imported from here)
from test_topics import (  # noqa: F401  (fixtures, and what kills the jobs a test started)
    Job,
    _no_job_left,
    brute_sums,
    results,
    starts,
    wait_until,
)


def test_a_retain_publisher_listed_again_after_a_stop_is_read_on_without_duplicates(tmp_path):
    system = readings_system(tmp_path)
    try:
        go, hold = tmp_path / "go", tmp_path / "hold"
        a = Job(system, "readings.py", "a", COUNT=3000, RETAIN=1000, GO=go, HOLD=hold, **HEARTBEATS)
        a.wait_published()
        b = Job(system, "sums.py", "b", ON_LOST="wait", TIMEOUT=60, **HEARTBEATS)
        wait_until(lambda: b.epochs_received() >= 2, what="B to read whole epochs of A")
        taken_out_and_back(a, b)
        # A says its registration again; B finds it, and reads it on (A held its end meanwhile)
        wait_until(lambda: len(starts(b)[0]) >= 2 or b.proc.poll() is not None, what="B to read A again")
        go.touch()
        hold.touch()
        seqs, sums = results(b)
        assert b.proc.returncode == 0, b.text()[-2000:]
        twice = len(seqs) - len(set(seqs))
        assert twice == 0, f"{twice} readings came twice: {starts(b)}"
        assert seqs == list(range(seqs[0], 3000)) and sums == brute_sums(seqs)
        assert "its publisher is listed again: reading it on" in b.text()
        assert a.finish()[-1].startswith("ended")
    finally:
        system.close()
