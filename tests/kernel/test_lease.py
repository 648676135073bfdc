"""A job process's lease (kernel.cli._lease): the thread that kills its
process group once the deadline its executor last wrote has passed, and
only then. The kill is replaced by a note of its time; no process is
started."""

from __future__ import annotations

import os
import resource
import threading
import time

import pytest

from kernel.cli import _lease as lease
from kernel.cli._lease import LeaseWriter


@pytest.fixture
def kills(monkeypatch):
    """The times the watch would have killed its process group."""
    killed: list[float] = []
    monkeypatch.setattr(lease.os, "killpg", lambda pgid, sig: killed.append(time.monotonic()))
    return killed


def _watching(fd: int) -> threading.Thread:
    thread = threading.Thread(target=lease._watch, args=(fd,), daemon=True)
    thread.start()
    return thread


def test_a_frozen_executors_last_deadline_is_held_exactly(kills):
    writer = LeaseWriter()
    deadline = time.monotonic() + 0.15
    writer.renew(deadline)  # and nothing more: the executor froze
    thread = _watching(writer.read_fd)
    thread.join(timeout=3)
    assert not thread.is_alive()
    assert len(kills) == 1 and deadline <= kills[0] < deadline + 0.2
    _close(writer)


def test_a_lease_on_a_descriptor_past_1023_is_held(kills):
    # an executor with many descriptors open hands a job one past select()'s
    # range: the watch died at once (ValueError), holding no lease
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1500:
        pytest.skip("the descriptor limit is too low for a descriptor numbered 1500")
    writer = LeaseWriter()
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1501), hard))
    try:
        os.dup2(writer.read_fd, 1500)
        deadline = time.monotonic() + 0.1
        writer.renew(deadline)
        thread = _watching(1500)
        thread.join(timeout=3)
        assert not thread.is_alive()
        assert len(kills) == 1 and deadline <= kills[0] < deadline + 0.2
    finally:
        os.close(1500)
        _close(writer)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _close(writer: LeaseWriter) -> None:
    writer.close()
    os.close(writer.read_fd)  # (the test holds the job's end too)
