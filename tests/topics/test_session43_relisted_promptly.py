"""Session 43: a publisher stopped (SIGSTOP) past the coordinator's heartbeat
and checks, taken out of the catalog, says its registration again as soon
as it runs again, and its waiting subscriber reads it on within a second
or so, not at the publisher's next refresh.

Once the apps' connections to the coordinator pinged it (`keep_heard`),
the resumed publisher read the coordinator's last ping together with the
connection's end: aiohttp's answer to that ping, written within `receive`
on a closing transport, raised ClientConnectionResetError out of the task
that reads the connection between requests (`Directory._read_idle`), which
ended without saying anything again. The publisher was listed again only
by its next refresh (`keep_registered`, every 10 s): its subscriber read
it again ~6.5 s after the resume instead of at once. The refresh is put
off here (60 s) so that only the connection's end can list it again.

Real processes: a coordinator of its own (its heartbeat short), readings.py
and sums.py (test_topics' helpers)."""

from __future__ import annotations

import time

from _relisted import HEARTBEATS, readings_system, taken_out_and_back
from test_topics import (  # noqa: F401  (fixtures, and what kills the jobs a test started)
    Job,
    _no_job_left,
    starts,
    wait_until,
)

# seconds from the publisher's resume to its subscriber reading it again, at
# most: its registration said again at once (milliseconds), the subscriber's
# next lookup (a second apart at most, `lookup_pauses`) and its connection;
# room for a loaded machine, and well under the refresh that listed it before
RELISTED_WITHIN = 4.0


def test_a_publisher_resumed_after_it_was_taken_out_is_read_again_promptly(tmp_path):
    system = readings_system(tmp_path)
    try:
        go, hold = tmp_path / "go", tmp_path / "hold"
        a = Job(system, "readings.py", "a", COUNT=3000, GO=go, HOLD=hold, KERNEL_TOPIC_REFRESH=60,
                **HEARTBEATS)
        a.wait_published()
        b = Job(system, "sums.py", "b", ON_LOST="wait", TIMEOUT=60, **HEARTBEATS)
        wait_until(lambda: starts(b)[0] or b.proc.poll() is not None, what="B to reach A")
        taken_out_and_back(a, b)
        resumed = time.monotonic()
        wait_until(lambda: len(starts(b)[0]) >= 2 or b.proc.poll() is not None, timeout=10,
                   what="B to read A again")
        took = time.monotonic() - resumed
        assert took < RELISTED_WITHIN, f"B read A again {took:.1f} s after A was resumed"
        assert "said its registration again" in a.text()
        go.touch()
        hold.touch()
        b.finish()
        assert b.proc.returncode == 0, b.text()[-2000:]
        assert a.finish()[-1].startswith("ended")
    finally:
        system.close()
