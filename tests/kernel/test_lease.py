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


def test_a_deadline_read_late_waits_for_the_renewal_a_full_pipe_dropped(kills):
    # The job process did not read its lease for a while (stopped, or its
    # thread starved of the GIL): the pipe filled with the deadlines of then,
    # and the executor's newer renewals were dropped (its writes never
    # block). Read at last, the newest deadline in the pipe is long passed;
    # the executor's next renewal comes RENEW later. Killing at once ended a
    # healthy job.
    writer = LeaseWriter()
    then = time.monotonic() - 60
    while True:
        try:
            os.write(writer._write_fd, f"{then!r}\n".encode())
        except BlockingIOError:
            break
    live = time.monotonic() + 60
    writer.renew(live)  # dropped: the pipe is full
    thread = _watching(writer.read_fd)
    time.sleep(lease.RENEW)
    for _ in range(100):  # the executor's next renewal, once the watch has made room for it
        try:
            os.write(writer._write_fd, f"{live!r}\n".encode())
            break
        except BlockingIOError:
            time.sleep(0.01)
    time.sleep(0.1)
    assert kills == []
    writer.close()  # the executor's end goes: the watch ends, and kills nothing
    thread.join(timeout=3)
    assert not thread.is_alive() and kills == []
    os.close(writer.read_fd)


def test_an_executor_cut_off_renewing_a_passed_deadline_is_not_waited_for(kills):
    # alive but unanswered, the executor writes the same deadline at every
    # renewal: the watch kills once it has passed, no grace for it
    writer = LeaseWriter()
    deadline = time.monotonic() + 0.1
    stop = threading.Event()

    def renewing():
        while not stop.is_set():
            writer.renew(deadline)
            stop.wait(0.02)

    renewer = threading.Thread(target=renewing, daemon=True)
    renewer.start()
    thread = _watching(writer.read_fd)
    thread.join(timeout=3)
    stop.set()
    renewer.join(timeout=3)
    assert not thread.is_alive()
    assert len(kills) == 1 and deadline <= kills[0] < deadline + lease.GRACE
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
