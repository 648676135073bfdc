"""Session 34's review of topics between jobs: real processes (a
coordinator, the publishing and subscribing jobs), each case compared
with what a plain reference says the subscriber must get."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import kernel.services
from kernel import Dataflow, run
from kernel.topics import ServiceError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import wait_until
from test_topics import Job, _no_job_left, brute_sums, coordinator, results, system  # noqa: F401  (fixtures)


def test_a_subscriber_connected_before_a_job_with_snapshots_released_anything_gets_its_first_epoch(system):  # noqa: F811
    """A job with a state_dir publishes nothing before its first epoch is
    complete. B connects after A has made its readings but before that
    epoch went out: nothing was published before it joined, so it gets
    them all, from epoch 1 (it was held for the next boundary, as if the
    readings had gone out already, started at epoch 2 and got none)."""
    hold = system.root / "hold"
    # (B must connect within A's first epoch: B's process has 10 s to start.
    # With 2 s, beside 2 CPU burners, B connected after A's epoch 4)
    a = Job(system, "readings.py", "a", COUNT=200, HOLD=hold, STATE_DIR=system.root / "state", JOB_EPOCH=10)
    wait_until(lambda: "holding" in a.text() or a.proc.poll() is not None, what="A to make its readings")
    b = Job(system, "sums.py", "b")
    wait_until(lambda: "a subscriber connected" in a.text() or b.proc.poll() is not None, what="B to connect")
    wait_until(lambda: "epoch 1 ends after" in a.text() or a.proc.poll() is not None, what="A's first epoch")
    log = a.text()
    # (the case: B was there before anything went out, and A had made its readings)
    assert log.index("holding") < log.index("a subscriber connected") < log.index("epoch 1 ends after"), log
    hold.touch()
    seqs, sums = results(b)
    assert a.finish()[-1].startswith("ended")
    assert seqs == list(range(200)), b.text()
    assert sums == brute_sums(seqs)
    assert "starts at epoch 1" in b.text()



def test_a_subscriber_joining_a_job_with_snapshots_mid_epoch_gets_that_epoch_whole(system):  # noqa: F811
    """Later on, while A publishes: B connects in the middle of one of A's
    epochs. None of it had gone out (an epoch goes out whole once
    complete), so B starts at once, after the last epoch out, and gets it
    and the rest (held for the next boundary, it missed that epoch)."""
    go = system.root / "go"  # (once B reads from A, A makes the rest of its readings at full speed)
    # (until then 100 readings a second: A goes on for 30 s, B has that long to
    # start. At the default 1,000, A had ended before B started on a loaded
    # machine, and B waited 20 s for a topic no longer published)
    a = Job(system, "readings.py", "a", COUNT=3000, RATE=10, STATE_DIR=system.root / "state", JOB_EPOCH=0.5,
            GO=go)
    a.wait_epoch(1)
    b = Job(system, "sums.py", "b")
    wait_until(lambda: "starts at epoch" in b.text() or b.proc.poll() is not None, what="B to start")
    go.touch()
    seqs, sums = results(b)
    assert a.finish()[-1].startswith("ended")
    log = a.text()
    before = log[:log.index("a subscriber connected")]  # (the epochs out when B joined: A's log, in order)
    last, out = max((int(e), int(n)) for e, n in re.findall(r"epoch (\d+) ends after (\d+) records", before))
    assert f"starts at epoch {last + 1}" in b.text(), (last, b.text())
    assert seqs == list(range(out, 3000)), (out, seqs[:3])
    assert sums == brute_sums(seqs)


@pytest.fixture(params=["nothing listens", "never answers"])
def no_coordinator(request):
    """An address where no coordinator answers: a port nothing listens on,
    or one that accepts connections and never answers (a frozen one)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if request.param == "never answers":
            listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def _subscribe_within(address: str, timeout: float) -> None:
    flow = Dataflow("late")
    flow.subscribe("nobody-publishes-this", timeout=timeout).collect()
    run(flow, coordinator=address)


@pytest.mark.parametrize("client", ["subscribe", "kernel.services.call"])
def test_a_lookups_timeout_bounds_its_wait_for_a_coordinator_that_does_not_answer(no_coordinator, client,
                                                                                   monkeypatch):
    """`subscribe(timeout=1)` and `call(..., timeout=1)` with no coordinator
    answering fail after about their timeout, saying why (each waited the
    KERNEL_COORDINATOR_TIMEOUT's 10 s to connect, and the answer's 5 s more
    where something accepted)."""
    monkeypatch.setenv("KERNEL_SECRET", "a-secret")
    started = time.monotonic()
    with pytest.raises(Exception, match=r"cannot reach the coordinator|did not answer") as failed:
        if client == "subscribe":
            _subscribe_within(no_coordinator, 1.0)
        else:
            kernel.services.call("nobody-serves-this", 1, coordinator=no_coordinator, timeout=1.0)
    took = time.monotonic() - started
    assert took < 4.0, f"{client} with timeout=1 failed after {took:.1f} s: {failed.value}"
    if client != "subscribe":
        assert isinstance(failed.value, ServiceError)


def test_a_record_that_cannot_be_encoded_fails_its_publisher_naming_the_topic_the_record_and_why(
        system, monkeypatch):  # noqa: F811
    """A record neither msgpack nor pickle takes (a lock in it) fails the
    publisher with an error that says which topic, which record and why
    (it said "a record that crosses kernels cannot be pickled": no record,
    no reason, and nothing crosses kernels there). retain=1: encoded at
    once, with no subscriber yet."""
    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    flow = Dataflow("locks")
    flow.from_iterable(range(3)).map(lambda n: (n, threading.Lock())).publish(system.topic, retain=1)
    with pytest.raises(Exception) as failed:
        run(flow, coordinator=f"127.0.0.1:{system.port}")
    text = str(failed.value)
    assert f"a record of topic {system.topic!r} cannot be sent to its subscribers" in text, text
    assert "cannot pickle '_thread.lock' object" in text and "(0, <unlocked _thread.lock" in text, text


def test_slow_disconnect_with_snapshots_drops_a_slow_subscriber_and_not_one_that_keeps_up(system):  # noqa: F811
    """A job with a state_dir sends each epoch whole, at once, once it is
    complete: an epoch over the 8 MiB queue (~20 MB here) is queued for every
    subscriber together. B keeps up and gets every reading; C, stalled after
    its first batch, still has more than the queue of it when the next epoch
    goes out, and is dropped (B was dropped too, at once: counted frame by
    frame as they were queued, the epoch was a backlog)."""
    go, stall, fast = system.root / "go", system.root / "stall", system.root / "fast"
    # (3,000 readings of 20 KB in 1.5 s: epochs of ~20 MB. C's kernel stalls
    # until it is dropped, and A's links drop a peer silent for two heartbeats,
    # 5 s by default: under load A's next epoch came later than that, and C was
    # dropped as dead, ConnectionLost, not too slow. 60 s: a hang's bound only)
    a = Job(system, "readings.py", "a", COUNT=3000, BATCH=100, RATE=20, PAYLOAD=20_000,
            SLOW_MODE="disconnect", STATE_DIR=system.root / "state", JOB_EPOCH=0.5, WAIT=go,
            KERNEL_HEARTBEAT=60)
    a.wait_published()
    b = Job(system, "sums.py", "b")
    # (C stalls until it is dropped: taking 0.5 s a batch, it kept up with a
    # loaded machine's smaller epochs, in 2 of 4 runs beside CPU burners)
    stall.touch()
    c = Job(system, "sums.py", "c", SLOW=0.5, STALL=stall, FAST=fast)
    wait_until(lambda: a.text().count("a subscriber connected") == 2 or a.proc.poll() is not None,
               what="B and C to connect")
    go.touch()
    seqs, sums = results(b)
    assert seqs == list(range(3000)), b.text()
    assert sums == brute_sums(seqs)
    wait_until(lambda: "dropping the subscriber" in a.text() or a.proc.poll() is not None,
               what="A to drop C")
    fast.touch()
    lines = c.finish()
    assert c.proc.returncode == 3, c.text()
    assert "SubscriberTooSlow" in lines[-1]["error"]
    assert a.finish()[-1].startswith("ended"), a.text()
    assert a.text().count("dropping the subscriber") == 1, a.text()


@pytest.mark.parametrize("what", ["publish", "serve"])
def test_a_topic_host_this_machine_cannot_listen_on_is_an_error_naming_it(system, what, monkeypatch):  # noqa: F811
    """KERNEL_TOPIC_HOST set to an address that is not this machine's (a
    documentation address): the job fails saying which variable and
    address (it was the socket's bare "[Errno 99] ... cannot assign
    requested address", or "Name or service not known" for a name)."""
    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    monkeypatch.setenv("KERNEL_TOPIC_HOST", "192.0.2.1")
    flow = Dataflow("elsewhere")
    if what == "publish":
        flow.from_iterable(range(3)).publish(system.topic)
    else:
        flow.serve(system.topic, lambda request: request)
    with pytest.raises(Exception, match=r"cannot listen on KERNEL_TOPIC_HOST='192\.0\.2\.1': .*address"):
        run(flow, coordinator=f"127.0.0.1:{system.port}")


def test_an_apps_next_run_subscribing_to_a_topic_that_ended_waits_for_a_new_publisher(system, monkeypatch):  # noqa: F811
    """This process (an app) reads a topic to its end, then runs another
    flow subscribing to the same name: a new subscriber, which waits for a
    publisher up to its timeout (the catalog took it for a kernel of the
    run before, which had found the topic, and it ended at once with
    nothing)."""
    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    hold = system.root / "hold"
    a = Job(system, "readings.py", "a", COUNT=50, HOLD=hold)
    a.wait_published()

    def end_a_once_read() -> None:
        wait_until(lambda: "a subscriber connected" in a.text(), what="the first run to connect")
        hold.touch()

    ender = threading.Thread(target=end_a_once_read)
    ender.start()
    first = Dataflow("first")
    first.subscribe(system.topic, timeout=20).collect()
    run(first, coordinator=f"127.0.0.1:{system.port}")  # (to A's end)
    ender.join()
    assert a.finish()[-1].startswith("ended")
    second = Dataflow("second")
    second.subscribe(system.topic, timeout=0.5).collect()
    with pytest.raises(Exception, match=f"no topic '{system.topic}' was published within 0.5 s"):
        run(second, coordinator=f"127.0.0.1:{system.port}")


PUBLISHES_ITS_OWN_CLASS = """
import os, sys
from kernel import Dataflow, Source, run

class Secret:  # this script's own class: no other process can import it
    def __init__(self, n):
        self.n = n

class Made(Source):
    def open(self, context):
        self.made, self.context = False, context
    def poll(self):
        if not self.made:
            self.made = True
            self.emit([Secret(n) for n in range(10)])
            return True
        self.context.kernel.call_later(0.05, self.wake)  # (until it is killed)
        return None

flow = Dataflow("own")
flow.source(Made, name="made").publish(os.environ["TOPIC"], retain=100, epoch_interval=0.05)
run(flow, coordinator=sys.argv[1])
"""


def test_records_this_subscriber_cannot_decode_fail_it_naming_the_topic_and_the_way_out(system, monkeypatch):  # noqa: F811
    """A publisher's records of a class of its script's own: the subscriber
    fails naming the topic, pickle's error, and record_type= (it said only
    "Can't get attribute 'Secret' on <module '__main__' ...>")."""
    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    (system.root / "own.py").write_text(PUBLISHES_ITS_OWN_CLASS)
    with open(system.root / "own.log", "wb") as log:
        publisher = subprocess.Popen([sys.executable, str(system.root / "own.py"),
                                      f"127.0.0.1:{system.port}"],
                                     stdout=log, stderr=log, env=dict(system.env, TOPIC=system.topic))
    try:
        flow = Dataflow("reader")
        flow.subscribe(system.topic, timeout=20).collect()
        with pytest.raises(Exception) as failed:
            run(flow, coordinator=f"127.0.0.1:{system.port}")
    finally:
        publisher.kill()
        publisher.wait()
    text = str(failed.value)
    assert f"topic {system.topic!r}: a batch from the publisher cannot be decoded here" in text, text
    assert "Can't get attribute 'Secret'" in text and "record_type=" in text, text
