"""Session 39 review: a job attempt's publisher id (KERNEL_RUN, "JOB.ATTEMPT")
is one for every run its process makes, so a script that runs its flow
again after a failed run publishes under the same id, its epochs numbered
from 1 again. A subscriber with on_lost="wait" finds that id listed again
and reads on (`Subscribe._same_again`, for a publisher stopped past the
coordinator's checks); what it had whole of the last run must not make it
drop the new run's epochs as "already had" (480 of 500 readings were lost).

Real processes: a coordinator of its own, readings.py and sums.py
(test_topics' helpers); the second publisher is another process with the
same KERNEL_RUN, as the same attempt's next run."""

from __future__ import annotations

from test_session39_relisted_review import HEARTBEATS, System
from test_topics import (  # noqa: F401  (fixtures, and what kills the jobs a test started)
    Job,
    _no_job_left,
    results,
    starts,
    wait_until,
)

FIRST = 1_000_000  # the second run's first reading


def waiting_after_a_first_run(system: System, a: Job, wait=None) -> Job:
    """B, waiting for a new publisher of the topic (`ON_LOST="wait"`) once it
    has read 10 epochs of A's first run and counted it lost (A killed).
    `wait`: A's WAIT file (no reading until it exists), made once B has
    reached A."""
    a.wait_published()
    b = Job(system, "sums.py", "b", ON_LOST="wait", TIMEOUT=60, **HEARTBEATS)
    if wait is not None:
        wait_until(lambda: starts(b)[0] or b.proc.poll() is not None, what="B to reach the first run")
        wait.touch()
    wait_until(lambda: b.epochs_received() >= 10, what="B to read epochs of the first run")
    a.kill()
    wait_until(lambda: "(a new publisher)" in b.text() or b.proc.poll() is not None, timeout=30,
               what="B to count the first run lost")
    return b


def test_a_second_run_under_the_same_publisher_id_is_read_whole(tmp_path):
    system = System(tmp_path)
    system.topic = "readings"
    system.start_coordinator(KERNEL_COORDINATOR_HEARTBEAT="0.5")
    try:
        a = Job(system, "readings.py", "a", KERNEL_RUN="job-7.1", EPOCH=0.05, **HEARTBEATS)
        b = waiting_after_a_first_run(system, a)
        # the same attempt's next run: its readings made once B has reached it, over many epochs
        go = tmp_path / "go"
        again = Job(system, "readings.py", "again", KERNEL_RUN="job-7.1", COUNT=300, START=FIRST, RATE=50,
                    EPOCH=0.05, WAIT=go, **HEARTBEATS)
        wait_until(lambda: len(starts(b)[0]) >= 2 or b.proc.poll() is not None,
                   what="B to reach the second run")
        go.touch()
        seqs, _ = results(b)
        assert b.proc.returncode == 0, b.text()[-2000:]
        second = [s for s in seqs if s >= FIRST]
        assert second == list(range(FIRST, FIRST + 300)), f"{300 - len(second)} readings lost: {starts(b)}"
        assert again.finish()[-1].startswith("ended")
    finally:
        system.close()
