"""Session 40: a publisher restored from its snapshots under the same
publisher id (a job attempt's process running its flow again, KERNEL_RUN
"JOB.ATTEMPT", with its state_dir) is read on by a waiting subscriber
after the last epoch it had whole, the epochs the publisher sends again
dropped (the lineage of its snapshots is the one read): exact, as before.
Its log said "read from its start, as a new publisher", which is what
happens to a run without snapshots (or of another stream), not to this
one; it says now that it reads on after that epoch.

Real processes: a coordinator of its own, readings.py (resumable, with a
state_dir) killed and run again with the same KERNEL_RUN and state_dir,
and sums.py reading on; B gets every reading once from where it joined."""

from __future__ import annotations

import re

from _relisted import HEARTBEATS, readings_system
from test_session39_same_id_review import waiting_after_a_first_run
from test_topics import (  # noqa: F401  (fixtures, and what kills the jobs a test started)
    Job,
    _no_job_left,
    brute_sums,
    results,
    starts,
    wait_until,
)

COUNT = 3000
# seconds: the job's (and the topic's) epochs. The restored publisher keeps what it
# restored for RESUME_EPOCHS (10) epochs while its subscribers come back, and B, waiting
# for a new publisher, looks it up every second at most, then dials it: at 0.05 s (0.5 s
# kept) B came back after it had gone in 2 of 14 runs, "epochs 22 to 32 were not
# delivered" (a documented limit, not this test's subject); 0.3 s keeps it 3 s
JOB_EPOCH = 0.3


def test_a_restored_publisher_under_the_same_id_is_said_to_be_read_on(tmp_path):
    system = readings_system(tmp_path)
    try:
        state, hold, first = tmp_path / "state", tmp_path / "hold", tmp_path / "first"
        # (no run ends, nor makes its readings, before B has reached it: under load, the
        # first run's 6 s of readings were over before B had read its 10 epochs of it,
        # or before B reached it at all (B had nothing of it); its end went out in its
        # last snapshot before it was killed, and the second run, restored from it,
        # ended again at once, nothing kept for B ("the publisher had ended in the
        # snapshot resumed from", README Topics 9); or the second run made its last
        # ~500 readings at its pace and ended before B found it ("the new publisher had
        # ended before this subscriber reached it", Topics 4): B ended short. WAIT: no
        # reading until B reads from the run; HOLD: past its COUNT readings a run waits
        # for `hold`, not ending)
        same = {"KERNEL_RUN": "job-8.1", "STATE_DIR": state, "RESUMABLE": 1, "JOB_EPOCH": JOB_EPOCH,
                "COUNT": COUNT, "RATE": 50, "HOLD": hold, **HEARTBEATS}
        a = Job(system, "readings.py", "a", WAIT=first, **same)
        b = waiting_after_a_first_run(system, a, wait=first)
        go = tmp_path / "go"
        again = Job(system, "readings.py", "again", WAIT=go, GO=go, **same)  # (restored from the state_dir)
        wait_until(lambda: len(starts(b)[0]) >= 2 or b.proc.poll() is not None,
                   what="B to reach the second run")
        go.touch()
        hold.touch()
        seqs, sums = results(b)
        assert b.proc.returncode == 0, b.text()[-2000:]
        # (from where B joined the first run, at an epoch's start, to the second run's end)
        assert seqs == list(range(seqs[0], COUNT)) and seqs[0] in {0, *a.boundaries().values()}, \
            f"not every reading once: {starts(b)}"
        assert sums == brute_sums(seqs)
        log = b.text()
        assert "as a new publisher" not in log, log[-3000:]
        said = re.findall(r"the publisher runs again \(its server is another\), restored from its "
                          r"snapshots: read on after epoch (\d+), the last this subscriber had whole", log)
        assert len(said) == 1, log[-3000:]
        assert again.finish()[-1].startswith("ended")
    finally:
        system.close()
