"""Session 43: the start-up probe of session 42 over TLS. A job process
under an executor probes its peers not yet linked (a bare connection,
closed at once: `net._relay.PEER_PROBE_EVERY`) and gives up at once on one
whose held port refuses, its process ended: the job is restarted moments
after a peer's death as it starts. Over TLS it was not done, a connection
closed before its TLS handshake being logged by the peer as a refused link
(`TLS handshake failed (ConnectionResetError)`): TLS jobs waited out the
coordinator's LOSS_HOLD (5 s). A TLS port now lets a connection that sent
nothing go in silence, as a plain one does, and the probe runs over TLS too.

A coordinator and two executors over TLS (the executors hand their files on
to their job processes), real processes; process `dies` kills itself as it
starts, in attempt 1; in attempt 2 process 1 serves its port only once
process 0's probe is pending there (`_peer_ended`)."""

from __future__ import annotations

import pytest
from _peer_ended import job_logs, restarted_after_a_death_at_start
from _system import a_system, wait_until

from kernel.system._master import LOSS_HOLD
from tests._certificates import node_tls_options

# seconds from the death heard to the next attempt running: well within the hold
RESTARTED_WITHIN = LOSS_HOLD / 2


@pytest.fixture(scope="module")
def tls_options(tmp_path_factory) -> list[str]:
    """The --tls-* options of every process: a CA's certificate for 127.0.0.1."""
    return node_tls_options(tmp_path_factory.mktemp("tls"))


@pytest.mark.parametrize("dies", [1, 0], ids=["the-accepted-one-dies", "the-dialled-one-dies"])
def test_a_tls_peer_that_dies_as_it_starts_restarts_the_job_at_once_and_quietly(tmp_path, tls_options, dies):
    with a_system(tmp_path, executors=2, options=tls_options) as system:
        took, logs = restarted_after_a_death_at_start(system, tmp_path, dies)
        assert f"error: no peer {dies}: process {dies} " in logs, logs
        assert took < RESTARTED_WITHIN, f"restarted {took:.2f} s after the death was heard"
        # attempt 2: process 1 served process 0's probe (pending at its port), then linked
        logs = wait_until(lambda: "running on process 1" in (text := job_logs(tmp_path)) and text,
                          every=0.02, what="process 1 to run, linked")
        assert "refused a link" not in logs and "TLS handshake" not in logs, logs
