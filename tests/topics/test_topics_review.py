"""Review tests for topics between jobs: real processes (a coordinator, a
publishing app, a subscribing app) and sockets; each compares what the
subscriber received with a plain-Python reference."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import System, wait_until

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

PUBLISHER = r'''
import logging, os, sys
sys.path.insert(0, sys.argv[4])
from kernel import Dataflow, Source, run

GO = sys.argv[2]
COUNT = 500

class Gated(Source):
    """COUNT ints from FIRST, once the file GO exists."""
    FIRST = 0
    def open(self, context):
        self.seq = self.FIRST
    def poll(self):
        if not os.path.exists(GO):
            self.context.kernel.call_later(0.02, self.wake)
            return None
        if self.seq >= self.FIRST + COUNT:
            return False
        self.emit(list(range(self.seq, self.seq + 50)))
        self.seq += 50
        return True

class A(Gated):
    FIRST = 0

class B(Gated):
    FIRST = 1000

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
flow = Dataflow("twice")
flow.source(A, name="a").publish(sys.argv[3], epoch_interval=0.05)
flow.source(B, name="b").publish(sys.argv[3], epoch_interval=0.05)
run(flow, coordinator=sys.argv[1])
print("ended", flush=True)
'''

SUBSCRIBER = r'''
import json, logging, sys
sys.path.insert(0, sys.argv[3])
from kernel import Dataflow, run

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
flow = Dataflow("reader")
got = flow.subscribe(sys.argv[2], timeout=20).collect()
run(flow, coordinator=sys.argv[1])
print(json.dumps(sorted(got.items)), flush=True)
'''


@pytest.fixture
def system(tmp_path):
    """A coordinator of its own, for a test that kills or stops it."""
    found = System(tmp_path)
    found.start_coordinator()
    yield found
    found.close()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    """One coordinator for the tests that only use it (each publishes a
    topic name of its own, and keeps its files in its own tmp_path)."""
    found = System(tmp_path_factory.mktemp("review-coordinator"))
    found.start_coordinator()
    yield found
    found.close()


def _spawn(system: System, tmp_path: Path, name: str, script: str,
           *args: str) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as err, open(tmp_path / f"{name}.out", "wb") as out:
        proc = subprocess.Popen([PYTHON, str(path), f"127.0.0.1:{system.port}", *args, str(ROOT)],
                                stdout=out, stderr=err, env=system.env, cwd=tmp_path)
    return proc, log


def test_one_topic_name_published_twice_in_one_flow_is_refused_or_delivers_both_streams(
        coordinator, tmp_path):
    """Two streams of one flow published under one name: both register as
    partition 0 of the same publisher id (`_directory.new_id()` is one per
    run, and `topic_publish` takes a known id as the same publisher), so the
    second's address silently replaces the first's in the catalog, and the
    first stream's end ends the topic. Expected: the flow is refused (a
    name published twice), or a subscriber gets both streams' records."""
    system = coordinator  # (the module's)
    go = tmp_path / "go"
    pub, pub_log = _spawn(system, tmp_path, "pub", PUBLISHER, str(go), "twice")
    procs = [pub]
    try:
        wait_until(lambda: pub.poll() is not None or pub_log.read_text().count(" served at ") == 2,
                   timeout=20, what="both publishers to register (or the flow to be refused)")
        if pub.poll() is not None:  # refused: the error says why
            assert pub.returncode != 0 and "publish: 'twice' is already published by this flow" in \
                pub_log.read_text(), pub_log.read_text()
            return
        sub, sub_log = _spawn(system, tmp_path, "sub", SUBSCRIBER, "twice")
        procs.append(sub)
        wait_until(lambda: "starts at epoch" in sub_log.read_text() or sub.poll() is not None, timeout=20,
                   what="the subscriber to start")
        go.touch()
        sub.wait(20)
        pub.wait(20)
        out = (tmp_path / "sub.out").read_text().splitlines()
        assert out, sub_log.read_text()
        received = json.loads(out[-1])
        expected = sorted([*range(0, 500), *range(1000, 1500)])
        assert received == expected, (f"received {len(received)} records, from "
                                      f"{sorted({r // 1000 * 1000 for r in received})} only; "
                                      f"expected {len(expected)}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


READINGS = Path(__file__).resolve().parent / "readings.py"


def test_a_publisher_whose_input_ends_while_the_coordinator_is_down_does_not_fail_its_job(system, tmp_path):
    """The coordinator restarts while a topic is in use (README: the catalog
    is kept; the subscriber's own `topic_unsubscribe` at its end takes a
    coordinator that went away as "a stale row in status, nothing more",
    and a lookup waits through a coordinator down longer than a dial). The
    publisher's input ends meanwhile: its `topic_unpublish`
    (`Publish._serve`) raises CoordinatorUnreachable after the Directory's
    10 s, which fails the publisher's whole job (exit 1; a job of the
    system would be restarted by its master, publishing its stream again)
    although every record went out. Expected: the job ends normally (or
    waits for the coordinator and then ends normally)."""
    import signal

    hold = tmp_path / "hold"
    env = dict(system.env, TOPIC="ends-while-down", COUNT="100", HOLD=str(hold), RATE="1000",
               KERNEL_COORDINATOR_TIMEOUT="1")  # (10 s by default)
    log = tmp_path / "pub.log"
    with open(log, "wb") as err, open(tmp_path / "pub.out", "wb") as out:
        pub = subprocess.Popen([PYTHON, str(READINGS), f"127.0.0.1:{system.port}"], stdout=out, stderr=err,
                               env=env, cwd=tmp_path)
    try:
        wait_until(lambda: " served at " in log.read_text() and "holding" in log.read_text(), timeout=20,
                   what="the publisher to register and make its readings")
        system.coordinator.send_signal(signal.SIGKILL)  # down (a restart that takes a while)
        system.coordinator.wait()
        hold.touch()  # the publisher's input ends now
        try:
            pub.wait(12)  # past the Directory's 1 s of tries
        except subprocess.TimeoutExpired:  # still waiting for the coordinator: bring it back
            system.coordinator_log.rename(tmp_path / "coordinator-1.log")
            system.start_coordinator()
            pub.wait(20)
        assert pub.returncode == 0, log.read_text()[-800:]
    finally:
        if pub.poll() is None:
            pub.kill()
            pub.wait()


SUMS = Path(__file__).resolve().parent / "sums.py"


def test_a_waiting_subscriber_whose_publisher_is_lost_while_the_coordinator_is_down_keeps_waiting(
        system, tmp_path):
    """on_lost="wait" (README, Topics 4): a subscriber waits for a restarted
    publisher; and a lookup waits through a coordinator down longer than a
    dial. Here the publisher dies while the coordinator is down (a machine
    that restarts both): the subscriber's `_try_again` finds nothing
    listening and asks the catalog (`_in_catalog`), whose
    CoordinatorUnreachable (a TopicError) ends the subscriber's job
    (`OperatorError ... CoordinatorUnreachable`), after a second 10 s dial
    for its `topic_unsubscribe`. Expected: it waits, as its lookup for a
    new publisher would (and reads on once the coordinator and a publisher
    are back)."""
    import signal

    # (the catalog's timeout cut from 10 s to 1, so that "down longer than a dial" takes a second)
    env = dict(system.env, TOPIC="lost-while-down", RATE="100", KERNEL_COORDINATOR_TIMEOUT="1")

    def spawn(args, name, **extra):
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as err, open(tmp_path / f"{name}.out", "wb") as out:
            return subprocess.Popen([PYTHON, *args], stdout=out, stderr=err, env=dict(env, **extra),
                                    cwd=tmp_path), log

    a, _ = spawn([str(READINGS), f"127.0.0.1:{system.port}"], "a")
    b, b_log = spawn([str(SUMS), f"127.0.0.1:{system.port}"], "b", ON_LOST="wait")
    procs = [a, b]
    try:
        wait_until(lambda: b_log.read_text().count(" received") >= 2 or b.poll() is not None, timeout=20,
                   what="the subscriber to read two epochs")
        assert b.poll() is None, b_log.read_text()
        system.coordinator.send_signal(signal.SIGKILL)  # the coordinator is down...
        system.coordinator.wait()
        a.send_signal(signal.SIGKILL)  # ... when the publisher dies
        a.wait()
        wait_until(lambda: "trying it again" in b_log.read_text() or b.poll() is not None, timeout=10,
                   what="the subscriber to see its connection break")
        # it finds the coordinator down (a CoordinatorUnreachable): it says it asks again (or ends)
        unreachable = "asking about topic 'lost-while-down' again until it answers"
        wait_until(lambda: unreachable in b_log.read_text() or b.poll() is not None, timeout=20,
                   what="the subscriber to find the coordinator down")
        try:
            b.wait(1)  # and goes on asking, a dial's time (1 s) more, before the coordinator comes back
        except subprocess.TimeoutExpired:
            pass
        out = (tmp_path / "b.out").read_text()
        assert b.poll() is None, f"the waiting subscriber ended (exit {b.returncode}): {out[-600:]}"
        # still waiting: the coordinator and a publisher come back, and it reads on to the end
        system.coordinator_log.rename(tmp_path / "coordinator-1.log")
        system.start_coordinator()
        a2, _ = spawn([str(READINGS), f"127.0.0.1:{system.port}"], "a2", COUNT="100", START="100000")
        procs.append(a2)
        b.wait(30)
        assert b.returncode == 0, (tmp_path / "b.out").read_text()[-600:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("build", ["publish", "subscribe", "serve"])
def test_a_topic_name_that_cannot_cross_the_wire_is_refused_when_the_flow_is_built(build):
    """A name is checked when the flow is built (`_api._check_name`: a
    non-empty str of at most 200 characters), but a str with a lone
    surrogate passes, and fails only at run time, deep in the topic's
    server task, as `UnicodeEncodeError: 'utf-8' codec can't encode
    character '\\udce9'` (the catalog request's JSON), which never says
    the name is at fault. Expected: a ValueError at build time, as for
    the other bad names."""
    from kernel import Dataflow

    flow = Dataflow()
    name = "caf\udce9"  # (a file name's undecodable byte, as os.fsdecode gives it)
    with pytest.raises(ValueError, match="name"):
        if build == "publish":
            flow.from_iterable(range(3)).publish(name)
        elif build == "subscribe":
            flow.subscribe(name)
        else:
            flow.serve(name, lambda request: request)



def _readings_app(system, tmp_path, topic: str, name: str, **extra):
    """The readings app publishing `topic` (its log `NAME.log`), and that log."""
    log = tmp_path / f"{name}.log"
    env = dict(system.env, TOPIC=topic, **extra)
    with open(log, "wb") as err, open(tmp_path / f"{name}.out", "wb") as out:
        return subprocess.Popen([PYTHON, str(READINGS), f"127.0.0.1:{system.port}"], stdout=out,
                                stderr=err, env=env, cwd=tmp_path), log


def test_a_killed_apps_topic_is_taken_over_even_where_its_port_now_serves_something_else(
        coordinator, tmp_path):
    """README (topics, an app's registration): a killed app's registration
    stays behind and the next publisher replaces it; a name is refused
    only while its publisher still runs. `_topics._still_published` takes
    "its address still accepts a TCP connection" for "it still runs": once
    the killed publisher's port (an ephemeral one, picked by port 0) is
    reused by any other listener (another job's topic server, any
    program), the name is refused to every new publisher ("published by
    app:..., which is running") for as long as that listener lives.
    Expected: the old publisher is seen to be gone (nothing answers there
    as its topic server: the links' handshake, or the publisher's meta,
    would tell) and B publishes."""
    system = coordinator  # (the module's)
    import re
    import signal
    import socket

    spawn = functools.partial(_readings_app, system, tmp_path, "taken-over")

    a, a_log = spawn("a")
    squatter = socket.socket()
    procs = [a]
    try:
        wait_until(lambda: " served at " in a_log.read_text(), timeout=20, what="A to register")
        port = int(re.search(r" served at 127\.0\.0\.1:(\d+)", a_log.read_text()).group(1))
        a.send_signal(signal.SIGKILL)
        a.wait()
        # the port is someone else's now (a plain listener stands for any of them)
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen(16)
        b, b_log = spawn("b", COUNT="50")
        procs.append(b)
        b.wait(30)
        assert b.returncode == 0, b_log.read_text()[-600:]
    finally:
        squatter.close()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_live_apps_topic_is_not_taken_over_and_a_killed_ones_is(coordinator, tmp_path):
    """(With the fix above: the coordinator asks the registered address for
    the publisher's id in the links' handshake.) A second app publishing
    the name of a live app's topic is refused; once the first is killed,
    the next takes the name over."""
    system = coordinator  # (the module's)
    import signal

    spawn = functools.partial(_readings_app, system, tmp_path, "held-name")

    a, a_log = spawn("a", HOLD=str(tmp_path / "never"))
    procs = [a]
    try:
        wait_until(lambda: " served at " in a_log.read_text(), timeout=20, what="A to register")
        b, b_log = spawn("b", COUNT="50")
        procs.append(b)
        assert b.wait(30) != 0
        assert "topic 'held-name' is published by app:" in b_log.read_text() and \
            "which is running" in b_log.read_text(), b_log.read_text()[-600:]
        a.send_signal(signal.SIGKILL)
        a.wait()
        c, c_log = spawn("c", COUNT="50")
        procs.append(c)
        assert c.wait(30) == 0, c_log.read_text()[-600:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_frozen_coordinator_never_leaves_a_finished_publisher_or_subscriber_hanging(system, tmp_path):
    """The coordinator stops answering with its connections open (SIGSTOP
    here; a machine that froze, or a cable cut, leaves no RST either) just
    as a topic ends: the publisher's `topic_unpublish` and the subscriber's
    `topic_unsubscribe` go out on their idle catalog connections, and
    `Directory._exchange` waits for the answer with no time limit (only
    its connect is bounded, by the Directory's `timeout`): both jobs, whose
    every record went out and came in, never end. Expected: each ends (or
    fails clearly) within a bounded time; the subscriber's unsubscribe is
    allowed to fail ("a stale row in status, nothing more")."""
    import signal
    import time

    hold = tmp_path / "hold"
    # (the Directory's timeout 1 s: an answer is waited for 1 + 2 s, `Directory._answer_within`)
    env = dict(system.env, TOPIC="frozen-catalog", RATE="1000", KERNEL_COORDINATOR_TIMEOUT="1")

    def spawn(args, name, **extra):
        log = tmp_path / f"{name}.log"
        with open(log, "wb") as err, open(tmp_path / f"{name}.out", "wb") as out:
            return subprocess.Popen([PYTHON, *args], stdout=out, stderr=err, env=dict(env, **extra),
                                    cwd=tmp_path), log

    a, a_log = spawn([str(READINGS), f"127.0.0.1:{system.port}"], "a", COUNT="100", HOLD=str(hold))
    procs = [a]
    try:
        wait_until(lambda: " served at " in a_log.read_text() or a.poll() is not None, timeout=20,
                   what="A to register")
        b, b_log = spawn([str(SUMS), f"127.0.0.1:{system.port}"], "b")
        procs.append(b)
        wait_until(lambda: "starts at epoch" in b_log.read_text() or b.poll() is not None, timeout=20,
                   what="B to start reading")
        assert a.poll() is None and b.poll() is None, a_log.read_text() + b_log.read_text()
        system.coordinator.send_signal(signal.SIGSTOP)
        try:
            hold.touch()  # A's input ends: its end goes to B, and both finish
            deadline = time.monotonic() + 12  # (the Directory's timeout is 1 s here)
            for proc in (a, b):
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
            hung = [name for name, proc in (("publisher", a), ("subscriber", b)) if proc.poll() is None]
            assert not hung, f"{hung} still running 12 s after the topic ended (the coordinator frozen)"
        finally:
            system.coordinator.send_signal(signal.SIGCONT)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_killed_subscribing_app_leaves_the_status_list_of_subscribers(coordinator, tmp_path):
    """`python -m kernel status` lists each topic's subscribing jobs. A
    subscribing app that is killed never sends `topic_unsubscribe`, and
    nothing else takes its row out (`forget_topics_of` is for jobs of the
    system; a new publisher under the name does not clear them either):
    the killed app is listed as a subscriber for as long as the topic
    lives, however long after. Its publisher saw its connection end at
    once. Expected: a subscriber that is gone leaves the list within
    seconds (as a system job's does when it ends)."""
    system = coordinator  # (the module's)
    import signal

    def spawn(script, name, **extra):
        log = tmp_path / f"{name}.log"
        env = dict(system.env, TOPIC="killed-reader", RATE="100", **extra)
        with open(log, "wb") as err, open(tmp_path / f"{name}.out", "wb") as out:
            return subprocess.Popen([PYTHON, str(script), f"127.0.0.1:{system.port}"], stdout=out,
                                    stderr=err, env=env, cwd=tmp_path), log

    def subscribers() -> list:
        topics = system.status()["topics"]
        return [s for t in topics if t["name"] == "killed-reader" for s in t["subscribers"]]

    a, a_log = spawn(READINGS, "a")
    procs = [a]
    try:
        wait_until(lambda: " served at " in a_log.read_text(), timeout=20, what="A to register")
        b, b_log = spawn(SUMS, "b")
        procs.append(b)
        wait_until(lambda: "epoch" in b_log.read_text() and subscribers(), timeout=20,
                   what="B to subscribe and read")
        b.send_signal(signal.SIGKILL)
        b.wait()
        wait_until(lambda: "subscriber connected" in a_log.read_text(), timeout=5, what="A's log")
        try:
            wait_until(lambda: not subscribers(), timeout=8, what="the killed subscriber to leave the list")
        except AssertionError:
            pass
        assert not subscribers(), f"the killed app is still listed: {subscribers()}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("second", ["publish", "serve"])
@pytest.mark.parametrize("first", ["publish", "serve"])
def test_a_name_published_or_served_twice_in_one_flow_is_refused_when_the_flow_is_built(first, second):
    """(The fix of the test above: the second `publish` or `serve` of one
    name in a flow is refused where it is written, saying how to publish
    two streams under one name. Two flows may each publish a name.)"""
    from kernel import Dataflow

    def claim(flow, how):
        if how == "publish":
            flow.from_iterable(range(3)).publish("prices")
        else:
            flow.serve("prices", lambda request: request)

    flow = Dataflow()
    claim(flow, first)
    done = "published" if first == "publish" else "served"
    with pytest.raises(ValueError, match=rf"^{second}: 'prices' is already {done} by this flow .*"
                                         r"a\.union\(b\)\.publish\('prices'\)"):
        claim(flow, second)
    claim(Dataflow(), second)
