"""Session 41 review: a loss is held for the attempt's other exits
(`_restart_unless_failed`, 50aa58e), and one of them that is a failure of
the job's own fails it, no restart spent. A peer's failure as a process
tells it (kernel.net.PeerFailed) names the peer and then the peer's own
error, which may be a loss of a third process: `process 1 (H:P) failed:
lost process 2 (...)`. That exit was classified as the job's own failure,
and, heard beside process 2's `exit -9` held for it, failed a job of three
processes for good (`--max-restarts 2`, 0 spent) where one was killed;
before the hold, the first exit heard decided. Seen in a real 3-process
job whose processes 1 and 2 were SIGKILLed: `job-1 failed: process 0
(127.0.0.1:58051) failed: lost process 2 (127.0.0.1:50439): link to
process 2 closed: code 1006 before the run finished`.

In-process: a real catalog and master, the exits told as executors tell
them; --max-restarts 0, so the message is the job's last."""

from __future__ import annotations

from kernel.system._master import classify
from tests.system.test_session41_loss_cause_review import ended_after

PASSED_ON = ("process 1 (127.0.0.1:7001) failed: lost process 2 (127.0.0.1:7002): link to process 2 "
             "closed: code 1006 before the run finished")


def test_a_peers_failure_that_is_a_loss_is_a_loss():
    assert classify(1, PASSED_ON) == "lost"
    assert classify(1, "process 0 (127.0.0.1:7000) failed: " + PASSED_ON) == "lost"
    assert classify(1, "process 1 (127.0.0.1:7001) failed: kernel 0: step 'f' raised ValueError: bad") \
        == "failed"


def test_a_loss_passed_on_by_a_peer_restarts_the_job_for_its_cause(tmp_path):
    state = ended_after(tmp_path, 3, [
        (2, -9, None),  # (the cause, held for the others)
        (0, 1, PASSED_ON),  # (process 1's word of it, via process 0)
        (1, 1, "lost process 2 (127.0.0.1:7002): link to process 2 closed: code 1006 before the run "
               "finished"),
    ])
    assert (state["status"], state["restarts"], state["message"]) == (
        "failed", 0, "process 2 on executor e3 was killed (exit -9); gave up after 0 restart(s)"), state
