"""Regression tests from a review of the cluster data path (the link relay,
its rings, a cluster run's start and end): each test here failed when
written and documents one bug.

* a cluster process stopped by SIGTERM (Kubernetes stopping its pod, Slurm,
  `kill`) exits 143 saying `terminated`, but tells its peers it was
  `interrupted (Ctrl-C)`: `_supervise` says so of every KeyboardInterrupt,
  and SIGTERM reaches the launcher as one;
* a failure of a cluster process's launcher itself (its store of epochs:
  a full disk) is not told to the peers: they end with `lost process 1 ...
  code 1006`, not the cause, which a kernel's failure does tell them
  (`_supervise` aborts through the relay only for a kernel's error or a
  Ctrl-C; anything else the launcher raises kills the relay unheard).
"""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

import pytest
from _ports import wait_until
from test_cluster import Cluster, kill_groups, slow_numbers, start_endless_cluster, started

REPO = Path(__file__).resolve().parents[2]
SECRET = "relay-review-secret"
PROMPTLY = 20.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")


# -- SIGTERM on one process ---------------------------------------------------------------------


def test_a_peer_stopped_by_sigterm_is_said_terminated_not_interrupted_by_ctrl_c(tmp_path):
    """README: SIGTERM "stops the run as Ctrl-C does and says
    `terminated`". Process 1 does say so; process 0 was told `process 1
    failed: interrupted (Ctrl-C)`, which nobody typed."""
    procs = start_endless_cluster(tmp_path)
    try:
        wait_until(lambda: started(tmp_path) == 2, what="the cluster to run")
        os.kill(procs[1].pid, signal.SIGTERM)  # the launcher only, as Kubernetes does to PID 1
        outs = [p.communicate(timeout=PROMPTLY) for p in procs]
    finally:
        kill_groups(procs)
    assert procs[1].returncode == 143 and outs[1][1].endswith("terminated\n"), outs[1]
    assert procs[0].returncode == 1, outs[0]
    assert "error: process 1 (127.0.0.1:" in outs[0][1], outs[0]
    assert "Ctrl-C" not in outs[0][1], outs[0]
    assert "failed: terminated" in outs[0][1], outs[0]


# -- a launcher's own failure -----------------------------------------------------------------------

_BREAK_STORE = False  # read by the forked process as it was when the test forked it


def _full_disk_here(build):
    """`build`, in a cluster process forked while _BREAK_STORE was set: its
    store's `mark_complete` (the launcher's, on each epoch process 0
    completes) fails as on a full disk."""
    if _BREAK_STORE:
        from kernel.state._store import SnapshotStore

        def full(self, epoch, final=False):
            raise OSError(28, "No space left on device")

        SnapshotStore.mark_complete = full
    return build()


def test_a_launchers_own_failure_is_told_to_the_peers(tmp_path):
    """Process 1's launcher fails marking an epoch complete (a full disk):
    process 1 ends with that error, and process 0 must hear it (PeerFailed
    naming process 1 and the cause), as it hears a kernel's failure. It was
    told nothing: the launcher's exception went past `_supervise`'s abort,
    the relay was killed, and process 0 said `lost process 1 (...): link to
    process 1 closed: code 1006`."""
    global _BREAK_STORE
    go = tmp_path / "go"  # never made: the source runs its ~2 s, epochs complete meanwhile
    cluster = Cluster(functools.partial(_full_disk_here, functools.partial(slow_numbers, go=go)), 2,
                      options_for=lambda i: {"state_dir": tmp_path / f"state{i}", "epoch_interval": 0.05},
                      start=False)
    try:
        cluster.start(0)
        _BREAK_STORE = True
        try:
            cluster.start(1)
        finally:
            _BREAK_STORE = False
        outcomes = cluster.outcomes(timeout=PROMPTLY)
    finally:
        cluster.close()
    assert outcomes[1] == ("error", "OSError", "[Errno 28] No space left on device"), outcomes
    status, kind, message = outcomes[0]
    assert (status, kind) == ("error", "PeerFailed"), outcomes[0]
    assert message.startswith(f"process 1 (127.0.0.1:{cluster.ports[1]}) failed: "), message
    assert "No space left on device" in message, message
