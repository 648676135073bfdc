"""Session 42: a job of two processes one of which dies as it starts
(before the processes have linked). The survivor cannot tell a dead peer
from a slow one by its links alone (none yet), and waited for it until its
start-up timeout (30 s); its job was restarted only at the end of the
coordinator's LOSS_HOLD (5 s after the dead one's exit, which its executor
reported), which waits for the survivor's exit. Under an executor every
process's port listens from before any process starts (its executor's
`prepare`, then the process's): a refusal there says the peer has ended, and
the survivor gives up at once (`net._relay.PEER_PROBE_EVERY`), so the job is
restarted within moments of the death.

And a survivor that did wait out its start-up timeout said `process 1
(H:P) did not connect within 30 s`, which the job master took for the job's
own failure (failed for good, no restart): it is a loss, as `could not
reach process 0 ...`, the dialler's word, is.

A coordinator and two executors, real processes; the pipeline kills its own
process (SIGKILL) as it is imported, in attempt 1 only, on process `dies`."""

from __future__ import annotations

import pytest
from _peer_ended import restarted_after_a_death_at_start
from _system import a_system

from kernel.system._master import LOSS_HOLD, classify

# seconds from the death heard to the next attempt running: well within the hold
RESTARTED_WITHIN = LOSS_HOLD / 2


@pytest.mark.parametrize("dies", [1, 0], ids=["the-accepted-one-dies", "the-dialled-one-dies"])
def test_a_peer_that_dies_as_it_starts_restarts_the_job_at_once(tmp_path, dies):
    with a_system(tmp_path, executors=2) as system:
        took, logs = restarted_after_a_death_at_start(system, tmp_path, dies)
        assert f"error: no peer {dies}: process {dies} " in logs, logs
        assert took < RESTARTED_WITHIN, f"restarted {took:.2f} s after the death was heard"


def test_a_peer_that_never_connected_is_a_loss():
    assert classify(1, "process 1 (127.0.0.1:7001) did not connect within 30 s") == "lost"
    assert classify(1, "process 1 (127.0.0.1:7001), process 2 (127.0.0.1:7002) did not connect within 30 s; "
                       "refused meanwhile: x") == "lost"
    assert classify(1, "kernel 0: operator 'map (step 1)': function 'f' raised ValueError: process 1 did "
                       "not connect within 3 s") == "failed"  # (a user's words: the job's own)
