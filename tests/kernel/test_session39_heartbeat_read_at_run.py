"""Session 39: `KERNEL_HEARTBEAT` is read when a run is planned, not when
`kernel` is imported: set in os.environ after the import (a notebook, a
test), it was ignored and the run's links kept 2.5 s. The validation stays:
a value under 0.1 s (or not seconds at all) is said and 2.5 s used."""

from __future__ import annotations

import logging

from kernel import Dataflow
from kernel._facade import plan_for

PEERS = "127.0.0.1:7001,127.0.0.1:7002"  # (planned only: nothing listens)


def _plan(**options):
    flow = Dataflow("heartbeat")
    flow.from_iterable(range(3)).collect()
    return plan_for(lambda: flow, peers=PEERS, process_id=0, secret="heartbeat-secret", **options)


def test_kernel_heartbeat_set_after_import_is_the_runs_default(monkeypatch):
    monkeypatch.setenv("KERNEL_HEARTBEAT", "0.4")
    assert _plan().cluster.heartbeat == 0.4
    monkeypatch.setenv("KERNEL_HEARTBEAT", "0.7")  # read again by the next run
    assert _plan().cluster.heartbeat == 0.7
    monkeypatch.delenv("KERNEL_HEARTBEAT")
    assert _plan().cluster.heartbeat == 2.5


def test_a_given_heartbeat_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("KERNEL_HEARTBEAT", "0.4")
    assert _plan(heartbeat=1.5).cluster.heartbeat == 1.5


def test_a_too_short_kernel_heartbeat_set_after_import_is_said_and_the_default_used(monkeypatch, caplog):
    monkeypatch.setenv("KERNEL_HEARTBEAT", "0.01")
    with caplog.at_level(logging.WARNING, logger="kernel.links"):
        assert _plan().cluster.heartbeat == 2.5
    assert "KERNEL_HEARTBEAT='0.01' is under the 0.1 s it must be at least: 2.5 s used" in caplog.text


def test_a_topic_services_heartbeat_follows_kernel_heartbeat_set_after_import(monkeypatch):
    from kernel.topics import _services

    monkeypatch.setenv("KERNEL_HEARTBEAT", "0.4")
    assert _services._heartbeat() == 0.8
