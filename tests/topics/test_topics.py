"""Topics between jobs (issue 18), with real processes and sockets: a
coordinator (`python -m kernel coordinator`), job A publishing timestamped
readings (readings.py), jobs B subscribing (sums.py), services."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import System, free_port, wait_until
from test_system_tls import certificates  # noqa: F401  (a fixture: the CA and certificates)

from kernel.topics._subscribe import EARLY_BREAKS

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
DT = 1 / 64  # readings.py's event seconds between readings
WINDOW = 0.5
# A's epoch_interval (readings.py's EPOCH, 0.2 s by default) in the tests that
# wait for a few of A's epochs, or for B to read a few whole ones: each such
# wait half as long, the same epochs
SHORT_EPOCH = 0.1


def value(seq: int) -> int:
    return (seq * 7919) % 101


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    """One coordinator for the tests that need nothing else of the system
    (each publishes under a topic name of its own)."""
    found = System(tmp_path_factory.mktemp("topics"))
    found.start_coordinator()
    yield found
    found.close()


_topics = itertools.count(1)


@pytest.fixture
def system(coordinator, tmp_path):
    """The module's coordinator, as seen from this test: its own folder
    (logs, outputs) and its own `topic` name, which readings.py and sums.py
    publish and subscribe to (a publisher a test kills leaves its
    registration behind; another test's name is not disturbed by it)."""
    view = copy.copy(coordinator)
    view.root = tmp_path
    view.topic = f"readings-{next(_topics)}"
    return view


@pytest.fixture
def own_system(tmp_path):
    """A coordinator of its own, for tests that start executors on it."""
    found = System(tmp_path)
    found.topic = "readings"
    found.start_coordinator()
    yield found
    found.close()


def topics_named(system: System, name: str) -> list[dict]:
    return [t for t in system.status()["topics"] if t["name"] == name]


_started: list[Job] = []  # this test's jobs: none outlives it (_no_job_left)


@pytest.fixture(autouse=True)
def _no_job_left():
    """Every job a test started is killed when it ends, passed or failed
    (a failed test's runaway subscriber once held 11 GB and thousands of
    ports through the rest of the suite)."""
    yield
    while _started:
        _started.pop().kill()


class Job:
    """A script of this folder run as a process of its own."""

    def __init__(self, system: System, script: str, name: str, **env) -> None:
        _started.append(self)
        self.log = system.root / f"{name}.log"
        self.out = system.root / f"{name}.out"
        environ = dict(system.env, **{k: str(v) for k, v in {"TOPIC": system.topic, **env}.items()})
        with open(self.log, "wb") as err, open(self.out, "wb") as out:
            self.proc = subprocess.Popen([PYTHON, str(HERE / script), f"127.0.0.1:{system.port}"],
                                         stdout=out, stderr=err, env=environ, cwd=system.root)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def boundaries(self) -> dict[int, int]:
        """epoch -> the readings published before its end (A's debug log)."""
        return {int(e): int(n) for e, n in re.findall(r"epoch (\d+) ends after (\d+) records", self.text())}

    def epochs_received(self) -> int:
        """Epoch markers this subscriber received (B's debug log)."""
        return len(re.findall(r"epoch \d+ received", self.text()))

    def wait_epoch(self, epoch: int) -> None:
        wait_until(lambda: epoch in self.boundaries() or self.proc.poll() is not None, timeout=30,
                   what=f"epoch {epoch}")
        assert epoch in self.boundaries(), self.text()

    def wait_published(self) -> None:
        """Until the coordinator has registered A's topic (its log says
        where it is served: A's first epochs may end before that), or A
        has ended."""
        wait_until(lambda: " served at " in self.text() or self.proc.poll() is not None, timeout=30,
                   what="the topic to be registered")
        assert " served at " in self.text(), self.text()

    def finish(self, timeout: float = 60) -> list[dict | str]:
        self.proc.wait(timeout)
        lines = self.out.read_text().splitlines()
        return [json.loads(line) if line.startswith("{") else line for line in lines]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


def results(job: Job) -> tuple[list[int], list[list]]:
    lines = job.finish()
    found = {k: v for line in lines if isinstance(line, dict) for k, v in line.items()}
    assert "seq" in found, (lines, job.text())
    return found["seq"], found["sums"]


def brute_sums(seqs: list[int]) -> list[list]:
    sums: dict[float, int] = defaultdict(int)
    for s in seqs:
        sums[math.floor(s * DT / WINDOW) * WINDOW] += value(s)
    return sorted([start, total] for start, total in sums.items())


def assert_whole_epochs(seqs: list[int], boundaries: dict[int, int], count: int) -> int:
    """B's readings are everything from one of A's epoch boundaries to A's end."""
    assert seqs, "the subscriber received nothing"
    first = seqs[0]
    assert first in {0, *boundaries.values()}, f"{first} is not an epoch boundary of A: {boundaries}"
    assert seqs == list(range(first, count))
    return first


def test_a_late_subscriber_gets_whole_epochs_and_exact_windows_two_at_once(system):
    go = system.root / "go"
    # B joins A mid-stream: A's readings at its pace would take 30 s, time for both B to join
    # however loaded the machine (with 3,000, 3 s, they once joined after A's end, and got
    # nothing); once both read whole epochs of A, A goes at full speed to its end
    a = Job(system, "readings.py", "a", COUNT=30_000, GO=go, EPOCH=SHORT_EPOCH)
    a.wait_epoch(3)
    joined = max(a.boundaries().values())
    b1 = Job(system, "sums.py", "b1")
    b2 = Job(system, "sums.py", "b2")
    wait_until(lambda: b1.epochs_received() and b2.epochs_received(), what="both B to read from A")
    go.touch()
    for b in (b1, b2):
        seqs, sums = results(b)
        first = assert_whole_epochs(seqs, a.boundaries(), 30_000)
        assert first > joined  # what was published before B joined is not delivered
        assert sums == brute_sums(seqs)
    assert a.finish()[-1].startswith("ended")


def test_subscribe_before_the_topic_exists_waits_for_it(system):
    b = Job(system, "sums.py", "b")
    wait_until(lambda: f"waiting for '{system.topic}' to be published" in b.text(),
               what="B to look the topic up")
    # A makes its readings once B has connected (its source may start before its topic is
    # registered: under load A's 1 s of readings were over before B found the topic), then
    # at full speed (GO: its pace would only make the test long)
    go = system.root / "go"
    a = Job(system, "readings.py", "a", COUNT=1000, WAIT=go, GO=go)
    wait_until(lambda: starts(b)[0] or b.proc.poll() is not None, what="B to connect to A")
    go.touch()
    seqs, sums = results(b)
    # from one of A's epoch boundaries
    assert_whole_epochs(seqs, a.boundaries(), 1000)
    assert sums == brute_sums(seqs)
    a.finish()


def test_a_subscriber_of_a_topic_that_never_comes_fails_after_its_timeout(system):
    b = Job(system, "sums.py", "b", TOPIC="nothing", TIMEOUT=0.3)
    lines = b.finish()
    assert b.proc.returncode == 3
    assert "no topic 'nothing' was published within 0.3 s" in lines[-1]["error"]


def test_kernel_run_finds_the_coordinator_from_its_coordinator_flag(system, tmp_path):
    """`python -m kernel run ... --coordinator HOST:PORT` with no
    KERNEL_COORDINATOR: the subscription asks that coordinator (its lookup
    times out there), where without the flag no coordinator is known."""
    pipeline = tmp_path / "subscriber.py"
    pipeline.write_text("from kernel import Dataflow\nflow = Dataflow('sub')\n"
                        "flow.subscribe('nothing', timeout=0.3).collect()\n")
    env = {k: v for k, v in system.env.items() if k != "KERNEL_COORDINATOR"}
    command = [PYTHON, "-m", "kernel", "run", str(pipeline)]
    with_flag = subprocess.run([*command, "--coordinator", f"{system.host}:{system.port}"], env=env,
                               capture_output=True, text=True, timeout=60)
    without = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert with_flag.returncode == 1 and "no topic 'nothing' was published within 0.3 s" in with_flag.stderr
    assert without.returncode == 1 and "none is known" in without.stderr
    bad = subprocess.run([*command, "--coordinator", "nowhere"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "--coordinator must be HOST:PORT" in bad.stderr


def test_a_record_type_unlike_the_topics_is_refused_at_subscribe_time(system):
    a = Job(system, "readings.py", "a", COUNT=100_000, TYPED=1, EPOCH=SHORT_EPOCH)
    a.wait_epoch(1)
    b = Job(system, "sums.py", "b", TYPED=1)
    lines = b.finish()
    a.kill()
    assert "record_type=dict): the topic's records are builtins.tuple" in lines[-1]["error"]


def test_a_killed_publisher_ends_its_subscribers_with_publisher_lost(system):
    a = Job(system, "readings.py", "a", COUNT=0, EPOCH=SHORT_EPOCH)
    a.wait_epoch(2)
    b = Job(system, "sums.py", "b")
    wait_until(lambda: b.epochs_received() >= 2, what="B to read whole epochs of A")
    a.kill()
    lines = b.finish()
    assert b.proc.returncode == 3
    assert f"PublisherLost: topic '{system.topic}': the publisher was lost" in lines[-1]["error"]


def test_on_lost_wait_goes_on_after_the_publishers_restart(system):
    a = Job(system, "readings.py", "a", COUNT=0, EPOCH=SHORT_EPOCH)
    a.wait_epoch(2)
    b = Job(system, "sums.py", "b", ON_LOST="wait")
    wait_until(lambda: b.epochs_received() >= 2, what="B to read whole epochs of A")
    a.kill()
    # the new A makes no reading until B reads from it, then goes at full speed: at its
    # pace (2 s of readings, its first ones made before it was even registered) it had
    # ended under load before B found it, and B ended with it having nothing of it
    # ("the new publisher had ended before this subscriber reached it", README Topics 4)
    go = system.root / "go"
    again = Job(system, "readings.py", "a2", COUNT=2000, WAIT=go, GO=go, EPOCH=SHORT_EPOCH)
    wait_until(lambda: len(starts(b)[0]) >= 2 or b.proc.poll() is not None, what="B to read from the new A")
    go.touch()
    seqs, _ = results(b)
    again.finish()
    # two whole stretches: from a boundary of the first A to where it died,
    # then from a boundary of the restarted A (its own numbering) to its end
    cut = next(i for i in range(1, len(seqs)) if seqs[i] != seqs[i - 1] + 1)
    before, after = seqs[:cut], seqs[cut:]
    assert before == list(range(before[0], before[-1] + 1)) and before[0] in a.boundaries().values()
    assert after == list(range(after[0], 2000))
    assert after[0] in {0, *again.boundaries().values()}


def test_a_waiting_subscriber_reads_a_publisher_started_afresh_from_its_start(system):
    """A publishes with a state_dir (the topic's epochs are its snapshots'),
    and B (on_lost="wait") has read tens of its epochs when A is killed.
    A2 publishes the topic afresh (a state_dir of its own: nothing to
    restore), its epochs numbered from 1 again. B said it had every epoch
    up to A's last, and A2 started it there: B dropped A2's epochs up to
    that number as ones it had. Now A2 is a stream of its own to B (the
    publishers' lineage): B starts on it as a new subscriber, at its next
    whole epoch (before its first reading here), gets every reading, and
    says which of A2's (empty) epochs it missed: once, from the kernel that
    reads A's one partition (B's other kernel reads only its progress)."""
    a = Job(system, "readings.py", "a", COUNT=0, STATE_DIR=system.root / "state-a", JOB_EPOCH=0.05)
    b = Job(system, "sums.py", "b", ON_LOST="wait", CORES=2)
    # (and each of B's kernels started on A: 30 epochs are one kernel's to count, and under
    # load B's second kernel looked A up only once A was killed, 3 starts in all, not 4)
    wait_until(lambda: (b.epochs_received() >= 30 and len(starts(b)[0]) >= 2) or b.proc.poll() is not None,
               what="30 epochs of A, both of B's kernels on it")
    a.kill()
    go = system.root / "go"  # A2 makes its readings once B reads from it, over ~5 of its epochs
    again = Job(system, "readings.py", "a2", COUNT=1000, START=100_000, STATE_DIR=system.root / "state-a2",
                WAIT=go)
    # each of B's kernels starts on A, then on A2
    wait_until(lambda: len(starts(b)[0]) >= 4 or b.proc.poll() is not None, what="B to read from A2")
    go.touch()
    seqs, _ = results(b)
    again.finish()
    assert [s for s in seqs if s >= 100_000] == list(range(100_000, 101_000)), b.text()[-3000:]
    # where B's kernels started on A2: the one that reads the records says
    # which of A2's (empty) epochs before that it missed, the other nothing
    on_a2 = starts(b)[0][2:]
    missed = [int(k) for k in re.findall(r"epochs 1 to (\d+) of the publisher's new stream were not "
                                         r"delivered", b.text())]
    assert missed in [[first - 1] if first > 1 else [] for first in on_a2], b.text()[-3000:]


HEARTBEAT = 0.5  # KERNEL_HEARTBEAT of the dropped-connection tests: A drops a stalled B within ~1-1.5 s


def _subscriber_dropped(system, on_lost: str, **options):
    """A publishing 20,000 readings (at full speed once `go` exists), B
    reading whole epochs of it, then B's kernel stalled until `fast` exists
    and dropped by A (its heartbeat): (a, b, go, fast)."""
    go, stall, fast = system.root / "go", system.root / "stall", system.root / "fast"
    a = Job(system, "readings.py", "a", COUNT=20_000, GO=go, KERNEL_HEARTBEAT=HEARTBEAT, **options)
    a.wait_published()
    b = Job(system, "sums.py", "b", ON_LOST=on_lost, SLOW=0.001, STALL=stall, FAST=fast,
            KERNEL_HEARTBEAT=HEARTBEAT)
    wait_until(lambda: b.epochs_received() >= 2, what="B to read whole epochs of A")
    stall.touch()
    wait_until(lambda: "dropping the link" in a.text(), timeout=30, what="A to drop the stalled B")
    return a, b, go, fast


@pytest.mark.parametrize("on_lost, publisher", [("wait", "plain"), ("wait", "retain"), ("wait", "snapshots"),
                                                ("fail", "plain")])
def test_a_connection_dropped_while_the_publisher_runs_is_no_lost_publisher(system, on_lost, publisher):
    """B's kernel blocks (its operator sleeps) past the links' heartbeat, so
    A drops B's connection while A runs on. B then tries A again: with
    on_lost="wait" it reads A from A's next whole epoch (it used to wait
    for ever for a new publisher); an A with `retain` replays its retained
    epochs to the new connection, and those B has are dropped (they were
    handed on twice); an A with snapshots keeps what B lacks for it (it
    dropped it once B's connection was gone) and B misses nothing. With
    "fail" B ends with ConnectionLost, not PublisherLost (A was never
    lost)."""
    options = {"retain": {"RETAIN": 100}, "snapshots": {"STATE_DIR": system.root / "state", "RESUMABLE": 1},
               "plain": {}}[publisher]
    a, b, go, fast = _subscriber_dropped(system, on_lost, **options)
    fast.touch()
    if on_lost == "fail":
        lines = b.finish()
        assert b.proc.returncode == 3
        assert f"ConnectionLost: topic '{system.topic}' partition 0: the connection to the publisher broke" \
            in lines[-1]["error"], lines
        assert a.proc.poll() is None  # A goes on
        a.kill()
        return
    wait_until(lambda: len(starts(b)[0]) >= 2 or b.proc.poll() is not None, what="B to read A again")
    go.touch()
    seqs, sums = results(b)
    a.finish()
    assert "the publisher still runs: reading it again" in b.text()
    assert sums == brute_sums(seqs)
    boundaries = {0, *a.boundaries().values()}
    if publisher != "plain":  # every reading once, from where B started to A's end
        assert seqs == list(range(seqs[0], 20_000)) and seqs[0] in boundaries
        return
    # two whole stretches of A: from a boundary to where B was dropped, then
    # from a later boundary to A's end
    cut = next(i for i in range(1, len(seqs)) if seqs[i] != seqs[i - 1] + 1)
    before, after = seqs[:cut], seqs[cut:]
    assert before[0] in boundaries and before[-1] + 1 in boundaries
    assert before == list(range(before[0], before[-1] + 1))
    assert after[0] in boundaries and after == list(range(after[0], 20_000))


@pytest.mark.parametrize("port", ["closed", "taken"])
@pytest.mark.parametrize("on_lost", ["wait", "fail"])
def test_a_publisher_that_ends_while_its_subscriber_is_cut_off_is_no_silent_end(system, on_lost, port):
    """B is dropped (stalled past the heartbeat) and A runs to its end and
    exits before B is back (its port closed, or taken since by a plain
    HTTP server). What A sent after the break is lost to B: with "fail" B
    ends with ConnectionLost saying A has ended since; with "wait" B ends,
    warning what it did not get, with whole epochs only (it ended as if
    nothing were missing: the catalog said "ended", read as a partition
    that had ended before B connected)."""
    a, b, go, fast = _subscriber_dropped(system, on_lost)
    go.touch()
    a.finish()
    assert a.proc.returncode == 0, a.text()
    other = None
    if port == "taken":
        served = int(re.search(r"served at [^:]+:(\d+)", a.text())[1])
        other = subprocess.Popen([PYTHON, "-m", "http.server", str(served), "--bind", "127.0.0.1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: _accepts(served), what="the HTTP server to listen")
    try:
        fast.touch()
        if on_lost == "fail":
            lines = b.finish()
        else:
            seqs, sums = results(b)
    finally:
        if other is not None:
            other.kill()
            other.wait()
    if on_lost == "fail":
        assert b.proc.returncode == 3
        assert (f"ConnectionLost: topic '{system.topic}' partition 0: the connection to the publisher broke"
                in lines[-1]["error"] and "the publisher has ended since" in lines[-1]["error"]), lines
        return
    assert "the publisher ended while this subscriber was cut off from it" in b.text()
    boundaries = {0, *a.boundaries().values()}
    assert seqs == list(range(seqs[0], seqs[-1] + 1)) and seqs[0] in boundaries and seqs[-1] + 1 in boundaries
    assert seqs[-1] < 19_999
    assert sums == brute_sums(seqs)


@pytest.mark.parametrize("on_lost", ["wait", "fail"])
def test_a_connection_dropped_before_its_first_frame_is_tried_again(system, on_lost):
    """B connects mid-epoch (A holds it until its next boundary, 5 s
    epochs) and is dropped before its first frame (stopped past the
    heartbeat): nothing of A had come, so in either mode B connects again
    and reads A from a boundary to its end (it counted A lost: "wait"
    waited for ever for another publisher, "fail" raised PublisherLost)."""
    go = system.root / "go"
    a = Job(system, "readings.py", "a", COUNT=20_000, GO=go, EPOCH=5, KERNEL_HEARTBEAT=HEARTBEAT)
    a.wait_published()
    b = Job(system, "sums.py", "b", ON_LOST=on_lost, KERNEL_HEARTBEAT=HEARTBEAT)
    wait_until(lambda: "a subscriber connected from" in a.text(), what="B to connect")
    b.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: "dropping the link" in a.text(), what="A to drop the stopped B")
    finally:
        b.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: starts(b)[0] or b.proc.poll() is not None, what="B to read A")
    go.touch()
    seqs, sums = results(b)
    a.finish()
    log = b.text()
    assert "trying it again" in log and log.index("trying it again") < log.index("starts at epoch"), log
    assert seqs == list(range(seqs[0], 20_000)) and seqs[0] in {0, *a.boundaries().values()}
    assert sums == brute_sums(seqs)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_a_publisher_that_closes_every_connection_at_once_is_tried_a_few_times_only(system):
    """A (broken) closes every subscriber's connection right after the
    handshake: B (on_lost="fail") tries it again a few times, a pause
    apart, then ends with PublisherLost (it dialled A thousands of times a
    second, for ever)."""
    a = Job(system, "readings.py", "a", COUNT=0, CLOSE_SUBSCRIBERS=1)
    a.wait_published()
    b = Job(system, "sums.py", "b")
    lines = b.finish()
    a.kill()
    assert b.proc.returncode == 3
    assert f"PublisherLost: topic '{system.topic}': the publisher was lost" in lines[-1]["error"], lines
    assert a.text().count("closing a subscriber") == 1 + EARLY_BREAKS


def test_a_waiting_subscriber_waits_for_a_registered_publisher_that_does_not_answer(system):
    """A is stopped (SIGSTOP) long enough that B's link to it dies and B's
    tries to connect again time out; A is still registered, so B (on_lost=
    "wait") keeps trying it, and goes on once A runs again (it used to
    count A lost and wait for ever for another publisher)."""
    go = system.root / "go"
    a = Job(system, "readings.py", "a", COUNT=20_000, GO=go, KERNEL_HEARTBEAT=HEARTBEAT, EPOCH=SHORT_EPOCH)
    a.wait_published()
    # (a round of tries: 0.5 s, then KERNEL_TOPIC_CONNECT_TIMEOUT, 5 s by default)
    b = Job(system, "sums.py", "b", ON_LOST="wait", KERNEL_HEARTBEAT=HEARTBEAT,
            KERNEL_TOPIC_CONNECT_TIMEOUT=1)
    wait_until(lambda: b.epochs_received() >= 2, what="B to read whole epochs of A")
    a.proc.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: "does not answer at" in b.text(), timeout=30, what="B to find A silent")
    finally:
        a.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: len(starts(b)[0]) >= 2 or b.proc.poll() is not None, what="B to read A again")
    go.touch()
    seqs, sums = results(b)
    a.finish()
    assert b.proc.returncode == 0 and seqs[-1] == 19_999
    assert sums == brute_sums(seqs)


def test_a_waiting_subscriber_ends_when_the_new_publisher_ended_before_it_was_back(system):
    """A is killed while B (on_lost="wait") is stopped, and A2, its
    restart, publishes and ends whole before B runs again: B finds A2
    ended and ends too, saying what it missed (it used to wait for ever:
    the catalog answered "not found" for a topic that ended before B had
    found it)."""
    a = Job(system, "readings.py", "a", COUNT=0, EPOCH=SHORT_EPOCH)
    a.wait_published()
    b = Job(system, "sums.py", "b", ON_LOST="wait")
    wait_until(lambda: b.epochs_received() >= 2, what="B to read whole epochs of A")
    b.proc.send_signal(signal.SIGSTOP)
    try:
        a.kill()
        a2 = Job(system, "readings.py", "a2", COUNT=200, RATE=0)
        a2.finish()
        assert a2.proc.returncode == 0, a2.text()
    finally:
        b.proc.send_signal(signal.SIGCONT)
    seqs, sums = results(b)
    assert b.proc.returncode == 0
    assert "the new publisher had ended before this subscriber reached it" in b.text()
    assert seqs == list(range(seqs[0], seqs[-1] + 1))  # A's whole epochs only, none of A2
    assert seqs[0] in {0, *a.boundaries().values()} and seqs[-1] + 1 in a.boundaries().values()
    assert sums == brute_sums(seqs)


def test_retain_lets_a_late_subscriber_start_at_the_oldest_retained_epoch(system):
    # A keeps more epochs than it will have: B, joining after A's 6th epoch,
    # starts at the very beginning (without retain, after the 6th)
    # (A holds its end until B has joined: a slow start of B must not find A ended)
    go, hold = system.root / "go", system.root / "hold"
    a = Job(system, "readings.py", "a", COUNT=3000, RETAIN=1000, GO=go, HOLD=hold, EPOCH=SHORT_EPOCH)
    a.wait_epoch(6)
    b = Job(system, "sums.py", "b")
    wait_until(b.epochs_received, what="B to read from A")  # (then A may go at full speed)
    go.touch()
    hold.touch()
    seqs, sums = results(b)
    assert seqs == list(range(3000))
    assert sums == brute_sums(seqs)
    a.finish()


MB = 1 << 20


@pytest.mark.parametrize("slow", ["backpressure", "disconnect"])
def test_a_slow_subscriber_never_makes_the_publisher_grow(system, slow):
    # A: 100 batches a second of 100 readings of 20 KB (200 MB/s, 200 MB in
    # all); B takes 50 ms a batch (40 MB/s): it would fall 150 MB behind
    # (A's peak ~60 MB with backpressure, ~170 MB without)
    b = Job(system, "sums.py", "b", SLOW=0.05)
    wait_until(lambda: "subscribing" in b.out.read_text(), what="B to start")
    # A makes its readings once B has connected (its source may start before its topic is
    # registered: under load A's readings were over before B found the topic)
    go = system.root / "go"
    a = Job(system, "readings.py", "a", COUNT=10_000, RATE=100, BATCH=100, PAYLOAD=20_000,
            SLOW_MODE=slow, WAIT=go)
    wait_until(lambda: starts(b)[0] or b.proc.poll() is not None, what="B to connect to A")
    go.touch()
    if slow == "backpressure":
        seqs, _ = results(b)
        assert_whole_epochs(seqs, a.boundaries(), 10_000)
    else:
        lines = b.finish()
        assert b.proc.returncode == 3
        too_slow = f"SubscriberTooSlow: topic '{system.topic}': this subscriber was too slow"
        assert too_slow in lines[-1]["error"]
    ended = a.finish()[-1]
    assert ended.startswith("ended"), a.text()
    peak = int(ended.split()[1])
    assert peak < 100 * MB, f"A's peak resident memory {peak / MB:.0f} MB"


def test_a_slow_subscriber_that_waits_for_lost_publishers_stays_bounded_too(system):
    """on_lost="wait": B holds each epoch until it is whole, granting its
    credit as it comes; whole epochs waiting past a window make it owe the
    credit, so A is slowed and B does not grow. A: 200 MB in 0.05 s epochs
    (~10 MB at full speed) to B taking 50 ms a batch, as above. (Peaks
    seen: A 60 MB, B 64 MB; B 129 MB when held frames are always credited.)"""
    b = Job(system, "sums.py", "b", SLOW=0.05, ON_LOST="wait")
    wait_until(lambda: "subscribing" in b.out.read_text(), what="B to start")
    go = system.root / "go"  # (A makes its readings once B has connected: as above)
    a = Job(system, "readings.py", "a", COUNT=10_000, RATE=100, BATCH=100, PAYLOAD=20_000, EPOCH=0.05,
            WAIT=go)
    wait_until(lambda: starts(b)[0] or b.proc.poll() is not None, what="B to connect to A")
    go.touch()
    lines = b.finish()
    found = {k: v for line in lines if isinstance(line, dict) for k, v in line.items()}
    assert "seq" in found, (lines, b.text())
    assert_whole_epochs(found["seq"], a.boundaries(), 10_000)
    ended = a.finish()[-1]
    assert ended.startswith("ended"), a.text()
    # B closes its connection once it has read END, and A answers: no link
    # left for the heartbeat to drop (A stopped reading it, and both waited
    # 5-7 s for that)
    assert "did not answer" not in a.text() + b.text(), a.text()
    for who, peak in (("A", int(ended.split()[1])), ("B", found["peak"])):
        assert peak < 100 * MB, f"{who}'s peak resident memory {peak / MB:.0f} MB"


def test_the_status_lists_topics_with_publisher_and_subscribers(system):
    a = Job(system, "readings.py", "a", COUNT=100_000, EPOCH=SHORT_EPOCH)
    a.wait_epoch(1)
    b = Job(system, "sums.py", "b")
    wait_until(lambda: any(t["subscribers"] for t in topics_named(system, system.topic)),
               what="B to subscribe")
    [topic] = topics_named(system, system.topic)
    assert topic["kind"] == "stream"
    assert topic["publisher"][0].startswith("127.0.0.1:") and topic["job"].startswith("app:")
    assert len(topic["subscribers"]) == 1
    table = system.cli("status").stdout
    assert re.search(rf"{system.topic}\s+stream\s+app:\S+\s+127\.0\.0\.1:\d+\s+app:", table), table
    a.kill()
    b.finish()


def test_without_a_coordinator_a_topic_is_a_clear_error(monkeypatch):
    from kernel import Dataflow, OperatorError, run

    monkeypatch.delenv("KERNEL_COORDINATOR", raising=False)
    flow = Dataflow()
    flow.subscribe("anything").collect()
    with pytest.raises(OperatorError, match="topics and services need a coordinator, and none is known"):
        run(flow)


SERVICE = """\
import asyncio, sys
from kernel import Dataflow, run

async def slow_square(n):
    await asyncio.sleep(0.01 * (n % 3))   # replies come back out of order
    return {"n": n, "square": n * n}

def config(request):
    if request == "boom":
        raise ValueError("no such key")
    return {"key": request, "value": len(request)}

flow = Dataflow("services")
flow.serve("square", slow_square)
flow.serve("config", config)
run(flow, coordinator=sys.argv[1], cores=2)
"""

CALLER = """\
import sys
import kernel.services
from kernel import Dataflow, run

flow = Dataflow("caller")
out = flow.from_iterable(["alpha", "be"]).map(
    lambda key: kernel.services.call("config", key)["value"]).collect()
run(flow, coordinator=sys.argv[1])
print(out.items)
"""


def test_a_service_called_from_an_app_pipelined_and_from_another_job(system, monkeypatch):
    import kernel.services
    from kernel.topics import ServiceError

    (system.root / "service.py").write_text(SERVICE)
    (system.root / "caller.py").write_text(CALLER)
    server = subprocess.Popen([PYTHON, "service.py", f"127.0.0.1:{system.port}"], env=system.env,
                              cwd=system.root, stderr=subprocess.PIPE)
    try:
        monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
        coordinator = f"127.0.0.1:{system.port}"
        assert kernel.services.call("config", "abc", coordinator=coordinator) == {"key": "abc", "value": 3}
        with pytest.raises(ServiceError, match="ValueError: no such key"):
            kernel.services.call("config", "boom", coordinator=coordinator)

        async def pipelined():
            async with kernel.services.connect("square", coordinator=coordinator) as svc:
                return await asyncio.gather(*(svc.call(n) for n in range(100)))

        assert asyncio.run(pipelined()) == [{"n": n, "square": n * n} for n in range(100)]
        caller = subprocess.run([PYTHON, "caller.py", coordinator], env=system.env, cwd=system.root,
                                capture_output=True, text=True, timeout=60)
        assert caller.stdout.strip() == "[5, 2]", caller.stderr
        kinds = {t["name"]: t["kind"] for t in system.status()["topics"] if t["name"] in ("square", "config")}
        assert kinds == {"square": "service", "config": "service"}
    finally:
        server.kill()
        server.wait()


ECHO = """\
import sys
from kernel import Dataflow, run

flow = Dataflow("echo")
flow.serve(sys.argv[2], lambda request: {"from": sys.argv[2], "echo": request})
run(flow, coordinator=sys.argv[1])
"""


def _register_service(system, name: str, address: str) -> None:
    """A registration left behind by an app that is gone: `name` served at `address`."""
    from kernel.topics._directory import Directory

    async def register():
        directory = Directory(("127.0.0.1", system.port), system.env["KERNEL_SECRET"].encode())
        try:
            await directory.request("topic_publish", name=name, id="gone", job="app:gone", kind="service",
                                    record_type=None, partitions=1, partition=0, address=address)
        finally:
            await directory.close()

    asyncio.run(register())


def test_a_client_looks_a_dead_services_address_up_again_and_reaches_its_new_server(system, monkeypatch):
    """A killed serving app's registration stays behind until the next one
    replaces it. A client that found the dead address does not keep to
    it until its timeout: it looks the service up again, and reaches the
    job that serves it now."""
    import kernel.services
    from kernel.topics import ServiceError

    name = f"echo-{next(_topics)}"
    _register_service(system, name, f"127.0.0.1:{free_port()}")  # nothing listens there
    (system.root / "echo.py").write_text(ECHO)
    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    coordinator = f"127.0.0.1:{system.port}"
    with pytest.raises(ServiceError, match=rf"service '{name}': nothing answered at http://127\.0\.0\.1:\d+, "
                                           r"where it is registered, within 1 s"):
        kernel.services.call(name, "hi", coordinator=coordinator, timeout=1)

    # Now registered where this test listens: the server starts only once
    # the client has tried that address (its connection accepted), and that
    # address then goes dead (the connection dropped, nothing listening).
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)
    _register_service(system, name, f"127.0.0.1:{listener.getsockname()[1]}")

    async def call_while_it_comes_back():
        calling = asyncio.ensure_future(asyncio.to_thread(
            kernel.services.call, name, "hi", coordinator=coordinator, timeout=20))
        with listener:
            tried, _ = await asyncio.to_thread(listener.accept)
            tried.close()
        server = subprocess.Popen([PYTHON, "echo.py", coordinator, name], env=system.env, cwd=system.root,
                                  stderr=subprocess.PIPE)
        try:
            return await calling
        finally:
            server.kill()
            server.wait()

    assert asyncio.run(call_while_it_comes_back()) == {"from": name, "echo": "hi"}


def test_a_client_refuses_an_address_that_now_serves_another_service(system, monkeypatch):
    """The port of a dead registration may be another service's by now: the
    client sees the server's own name in the handshake, and fails with a
    clear error at its timeout instead of sending its requests there. It
    looks the name up again meanwhile, apart, growing (every 50 ms, a
    lookup and a handshake each, before): counted as they are sent."""
    import kernel.services
    from kernel.topics import ServiceError
    from kernel.topics._directory import Directory

    lookups: list[float] = []
    request = Directory._request

    async def counted(self, op, fields, until=None):
        if op == "topic_lookup":
            lookups.append(asyncio.get_running_loop().time())
        return await request(self, op, fields, until)

    other = f"other-{next(_topics)}"
    (system.root / "echo.py").write_text(ECHO)
    coordinator = f"127.0.0.1:{system.port}"
    server = subprocess.Popen([PYTHON, "echo.py", coordinator, other], env=system.env, cwd=system.root,
                              stderr=subprocess.PIPE)
    try:
        [served] = wait_until(lambda: [t for t in system.status()["topics"] if t["name"] == other],
                              what="the other service to be registered")
        name = f"echo-{next(_topics)}"
        _register_service(system, name, served["publisher"][0])
        monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
        monkeypatch.setattr(Directory, "_request", counted)
        with pytest.raises(ServiceError, match=rf"{name}.*serves .*{other}.*not this service"):
            kernel.services.call(name, "hi", coordinator=coordinator, timeout=2)
        # (doubling from 50 ms: ~7 in 2 s; every 50 ms it was ~25)
        assert 3 <= len(lookups) <= 12, lookups
    finally:
        server.kill()
        server.wait()


def test_a_wrong_secret_is_refused_by_the_topic_server(system):
    from kernel.net._links import AuthenticationFailed, connect

    from kernel.topics._directory import Directory
    from kernel.topics._publish import TOPIC_PATH

    a = Job(system, "readings.py", "a", COUNT=100_000, EPOCH=SHORT_EPOCH)
    a.wait_epoch(1)

    async def attempt():
        directory = Directory(("127.0.0.1", system.port), system.env["KERNEL_SECRET"].encode())
        try:
            found = await directory.lookup(system.topic, 5)
        finally:
            await directory.close()
        with pytest.raises(AuthenticationFailed):
            await connect(f"http://{found['addresses'][0]}", b"not the secret", 0, path=TOPIC_PATH,
                          timeout=5, meta={"topic": system.topic}, check_meta=False)

    try:
        asyncio.run(attempt())
        wait_until(lambda: "refused a topic subscriber" in a.text(), what="A to log the refusal")
    finally:
        a.kill()


def test_a_job_submitted_to_the_system_publishes_through_its_executor(own_system):
    """The executor tells the job its coordinator (KERNEL_COORDINATOR) and
    name (KERNEL_JOB): the topic is registered under the job's id."""
    system = own_system
    system.start_executor(cores=2)
    system.executors_up(1)
    pipeline = system.root / "pub.py"
    pipeline.write_text("from kernel import Dataflow\n"
                        "flow = Dataflow('pub')\n"
                        "flow.from_iterable(range(10)).publish('numbers')\n"
                        "flow.serve('hold', lambda r: r)\n")  # (a serving job runs until killed)
    done = system.cli("submit", "pub.py")
    assert done.returncode == 0, done.stderr
    job = done.stdout.split()[0]
    topic = wait_until(lambda: {t["name"]: t for t in system.status()["topics"]}.get("hold"),
                       what="the service to be registered")
    assert topic["job"] == job
    assert system.cli("kill", job).returncode == 0
    # killed, its topics go from the catalog: a subscriber waits for a new
    # publisher (and times out) instead of dialling the dead one's address
    assert system.status()["topics"] == []
    b = Job(system, "sums.py", "b", TOPIC="numbers", TIMEOUT=0.3)
    lines = b.finish()
    assert b.proc.returncode == 3
    assert "no topic 'numbers' was published within 0.3 s" in lines[-1]["error"]


@pytest.mark.parametrize("partitions", ["per-kernel", "merged"])
def test_two_kernels_publish_to_two_kernels(system, partitions):
    """Per-kernel: A's two partitions, one per subscribing kernel; merged:
    one partition (kernel 0's), read by B's kernel 0. Either way B gets
    whole epochs of every partition and exact windows (the watermark the
    least of its partitions')."""
    b = Job(system, "sums.py", "b", CORES=2)
    wait_until(lambda: "subscribing" in b.out.read_text(), what="B to start")
    # A makes its readings once B reads every partition (under load B's
    # connections came after A's 1 s run, once: B got nothing)
    go = system.root / "go"
    a = Job(system, "readings.py", "a", COUNT=1000, CORES=2, PARTITIONS=partitions, WAIT=go)
    read = 2 if partitions == "per-kernel" else 1
    wait_until(lambda: len(starts(b)) == read or b.proc.poll() is not None, what="B to read every partition")
    go.touch()
    seqs, sums = results(b)
    a.finish()
    # readings.py on two kernels: each kernel makes the same readings 0..999
    counts = defaultdict(int)
    for s in seqs:
        counts[s] += 1
    assert counts == dict.fromkeys(range(1000), 2)
    assert sums == brute_sums(seqs)


def test_bad_arguments_are_refused_when_the_flow_is_built():
    from kernel import Dataflow

    flow = Dataflow()
    stream = flow.from_iterable(range(3))
    cases = [
        (lambda: stream.publish(""), ValueError, "publish needs a name"),
        (lambda: stream.publish("t", partitions="all"), ValueError, "'per-kernel' or 'merged'"),
        (lambda: stream.publish("t", retain=0), ValueError, "retain must be a number of epochs >= 1"),
        (lambda: stream.publish("t", retain=2, retain_bytes=0), ValueError,
         "retain_bytes must be a number of bytes >= 1"),
        (lambda: stream.publish("t", slow="drop"), ValueError, "'backpressure' or 'disconnect'"),
        (lambda: stream.publish("t", epoch_interval=0), ValueError, "epoch_interval must be a positive"),
        (lambda: stream.publish("t", epoch_interval=True), ValueError,
         "publish: epoch_interval must be a positive number of seconds, got True"),
        (lambda: stream.publish("t", record_type="tuple"), TypeError, "record_type must be a class"),
        (lambda: flow.subscribe("t", on_lost="retry"), ValueError, "on_lost must be 'fail' or 'wait'"),
        (lambda: flow.subscribe("t", timeout=-1), ValueError, "timeout must be a number of seconds"),
        (lambda: flow.subscribe("t", timeout=True), ValueError,
         "subscribe: timeout must be a number of seconds >= 0 or None, got True"),
        (lambda: flow.serve("s", "not a function"), TypeError, "the handler must be callable"),
    ]
    for build, error, message in cases:
        with pytest.raises(error, match=re.escape(message)):
            build()


def test_a_coordinator_address_that_is_not_host_port_is_refused():
    from kernel import Dataflow, run

    with pytest.raises(ValueError, match="coordinator must be 'HOST:PORT'"):
        run(Dataflow(), coordinator="localhost")


def test_a_name_published_by_a_running_app_is_refused_and_a_dead_ones_is_taken_over(system):
    first = Job(system, "readings.py", "a1", COUNT=0)
    first.wait_published()
    second = Job(system, "readings.py", "a2", COUNT=0)
    second.proc.wait(30)
    assert second.proc.returncode != 0
    assert f"topic '{system.topic}' is published by app:" in second.text()
    first.kill()  # its registration stays behind; the next publisher replaces it
    third = Job(system, "readings.py", "a3", COUNT=0)
    third.wait_published()  # (not its first epoch: under load that may end before the catalog answers)
    [topic] = topics_named(system, system.topic)
    assert topic["job"].endswith(f":{third.proc.pid}")
    third.kill()


def readings_process(executor):
    """The pid of the executor's job process running readings.py, or None."""
    from _system import descendants

    for pid in descendants(executor.pid):
        try:
            if b"readings.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
        except OSError:
            continue
    return None


def attempt_boundaries(log: Path, job: str, partition: int = 0) -> dict[int, dict[int, int]]:
    """attempt -> {epoch: readings published before its end} of a
    partition of a submitted readings.py (its executor's log of the job, an
    attempt after another)."""
    found: dict[int, dict[int, int]] = defaultdict(dict)
    attempt = 0
    for line in log.read_text(errors="replace").splitlines():
        if header := re.match(rf"--- {job} attempt (\d+),", line):
            attempt = int(header[1])
        elif ended := re.search(rf"partition {partition}: epoch (\d+) ends after (\d+) records", line):
            found[attempt][int(ended[1])] = int(ended[2])
    return found


def test_on_lost_wait_goes_on_after_the_job_master_restarts_the_publishing_job(own_system):
    """A publishing job submitted to the system, its process SIGKILLed
    mid-epoch: the job master starts it again (attempt 2, a new publisher
    id, its readings from seq NEW on), and the subscriber with
    on_lost="wait" goes on from a whole epoch of it. What the subscriber
    got is whole epochs only: of attempt 1, from one of its epoch
    boundaries to another (the epoch it was in the middle of when it died
    is not handed on), then of attempt 2 from a boundary to its end, each
    reading once; its tumbling sums equal a brute-force sum over them."""
    system = own_system
    # (a submitted job's environment is its executor's)
    go = system.root / "go"  # (attempt 2 makes its readings at full speed once B reads from it)
    system.env.update(TOPIC=system.topic, RESTARTED=str(NEW), COUNT="1500", LOG_TOPICS="1", GO=str(go))
    executor = system.start_executor(cores=2)
    system.executors_up(1)
    (system.root / "readings.py").write_text((HERE / "readings.py").read_text())
    done = system.cli("submit", "readings.py")
    assert done.returncode == 0, done.stderr
    job = done.stdout.split()[0]
    log = system.root / "executor1" / "logs" / f"{job}.log"
    b = Job(system, "sums.py", "b", ON_LOST="wait")
    # B has read a whole epoch of attempt 1 once it has two of its markers
    wait_until(lambda: b.epochs_received() >= 2, what="B to read from the first attempt")

    os.kill(wait_until(lambda: readings_process(executor), what="the job's process"), signal.SIGKILL)
    wait_until(lambda: len(starts(b)[0]) >= 2 or b.proc.poll() is not None, what="B to read from attempt 2")
    go.touch()
    seqs, sums = results(b)
    assert system.job(job)["restarts"] == 1
    attempts = attempt_boundaries(log, job)
    before, after = [s for s in seqs if s < NEW], [s for s in seqs if s >= NEW]
    assert len(seqs) == len(set(seqs)), "a reading received twice"
    assert before and before == list(range(before[0], before[-1] + 1))
    assert before[0] in {0, *attempts[1].values()}, "attempt 1's readings not from an epoch boundary"
    assert before[-1] + 1 in attempts[1].values(), "half of attempt 1's last epoch was handed on"
    assert after and after == list(range(after[0], NEW + 1500))  # attempt 2, from a boundary to its end
    assert after[0] - NEW in {0, *attempts[2].values()}, "attempt 2's readings not from an epoch boundary"
    assert sums == brute_sums(seqs)


def test_topics_over_tls(tmp_path, certificates):  # noqa: F811  (the fixture imported above)
    """KERNEL_TLS=CERT,KEY,CA: the coordinator's connection, the topic's
    and the subscriber's all over TLS; a plain connection to the topic is
    refused."""
    from kernel.net._links import LinkError, connect

    from kernel.topics._publish import TOPIC_PATH

    tls = ["--tls-cert", certificates["node.pem"], "--tls-key", certificates["node.key"],
           "--tls-ca", certificates["ca.pem"]]
    system = System(tmp_path, options=tls)
    system.topic = "readings"
    system.env["KERNEL_TLS"] = ",".join(certificates[n] for n in ("node.pem", "node.key", "ca.pem"))
    try:
        system.start_coordinator()
        go, subscribed = tmp_path / "go", tmp_path / "subscribed"
        # A makes no reading until B has subscribed (its 2,000 take A 2 s: on a loaded
        # machine B started later than that, and found A ended)
        a = Job(system, "readings.py", "a", COUNT=2000, GO=go, WAIT=subscribed, EPOCH=SHORT_EPOCH)
        a.wait_epoch(2)
        b = Job(system, "sums.py", "b")
        wait_until(lambda: any(t["subscribers"] for t in system.status()["topics"]), what="B to subscribe")
        address = system.status()["topics"][0]["publisher"][0]

        async def plain():
            with pytest.raises(LinkError):
                await connect(f"http://{address}", system.env["KERNEL_SECRET"], 0, path=TOPIC_PATH,
                              timeout=1, meta={"topic": "readings"}, check_meta=False)

        asyncio.run(plain())
        subscribed.touch()
        wait_until(b.epochs_received, what="B to read from A")  # (then A may go at full speed)
        go.touch()
        seqs, sums = results(b)
        assert_whole_epochs(seqs, a.boundaries(), 2000)
        assert sums == brute_sums(seqs)
        a.finish()
    finally:
        system.close()


def test_run_async_in_an_app_subscribes_and_unsubscribes_at_the_end(system, monkeypatch):
    from kernel import Dataflow, run_async

    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    a = Job(system, "readings.py", "a", COUNT=1500)
    a.wait_epoch(1)
    flow = Dataflow("app")
    seqs = flow.subscribe(system.topic, timeout=10).map(lambda r: r[0]).collect()

    async def app():
        await run_async(flow, coordinator=f"127.0.0.1:{system.port}")

    asyncio.run(app())
    assert_whole_epochs(seqs.items, a.boundaries(), 1500)
    a.finish()
    assert topics_named(system, system.topic) == []  # the publisher ended (unpublished); nobody subscribes


@pytest.mark.parametrize("status, found", [("running", True), ("restarting", True), ("killed", False)])
def test_a_lookup_forgets_a_topic_left_behind_by_an_ended_job(tmp_path, status, found):
    """A catalog that kept the rows of a job since ended (the coordinator
    went down in between): looking the topic up removes them."""
    import json as _json

    from kernel.system._catalog import Catalog
    from kernel.system._topics import request

    catalog = Catalog(tmp_path / "data")
    try:
        db = catalog._db
        db.execute("INSERT INTO pipelines VALUES ('h', 'p.py', x'00')")
        db.execute("INSERT INTO jobs (id, seq, name, flow, pipeline, processes, cores, max_restarts, status, "
                   "submitted) VALUES ('job-1', 1, 'p.py:flow', 'flow', 'h', 1, 1, 3, ?, 0)", (status,))
        schema = _json.dumps({"id": "x", "partitions": 1})
        db.execute("INSERT INTO topics VALUES ('t', 'job-1', 0, ?)", (schema,))
        db.execute("INSERT INTO publications VALUES ('t', 'job-1', 0, '127.0.0.1:9')")
        reply = asyncio.run(request(catalog, "topic_lookup", {"name": "t"}))
        assert reply["found"] is found
        assert [t["name"] for t in catalog.topics()] == (["t"] if found else [])
    finally:
        catalog.close()


# -- retain bounded in bytes; a publisher restarted with another partition count -----------


def partition_boundaries(job: Job) -> dict[int, set[int]]:
    """partition -> how many readings its kernel had published at each of
    its epoch ends, and 0 (A's debug log)."""
    found: dict[int, set[int]] = defaultdict(lambda: {0})
    for p, n in re.findall(r"partition (\d+): epoch \d+ ends after (\d+) records", job.text()):
        found[int(p)].add(int(n))
    return found


def starts(job: Job) -> dict[int, list[int]]:
    """partition -> the epochs B's connections to it started at (B's log)."""
    found: dict[int, list[int]] = defaultdict(list)
    for p, e in re.findall(r"partition (\d+): starts at epoch (\d+)", job.text()):
        found[int(p)].append(int(e))
    return found


def test_retain_bytes_drops_the_oldest_epochs_whole_and_says_where_a_late_subscriber_starts(system):
    """A publishes 54 MB in ~6 MB epochs with retain=1000 and
    retain_bytes=20 MiB, then holds: B, joining then, is told the epoch it
    starts at, the oldest epoch that fits the bound (one more would not),
    and gets everything from that epoch's start, exactly. B is slow and A's
    slow="disconnect": the replayed epochs (held by A anyway) do not count
    against its queue, and B is not dropped."""
    hold = system.root / "hold"
    bound, payload, count = 20 * MB, 20_000, 2700
    # (~6 MB epochs: 300 readings each, 30 a batch at 100 batches a second in
    # SHORT_EPOCH epochs; A's run takes ~1 s)
    a = Job(system, "readings.py", "a", COUNT=count, BATCH=30, PAYLOAD=payload, RETAIN=1000,
            RETAIN_BYTES=bound, SLOW_MODE="disconnect", HOLD=hold, EPOCH=SHORT_EPOCH)
    wait_until(lambda: "holding" in a.text() or a.proc.poll() is not None, what="A to publish everything")
    b = Job(system, "sums.py", "b", SLOW=0.01)
    wait_until(lambda: starts(b) or b.proc.poll() is not None, what="B to start")
    # A goes on cutting epochs (pushing their markers to B's queue) until B
    # has caught up: with the replay counted, the first push drops B
    later = max(a.boundaries()) + 2
    wait_until(lambda: f"epoch {later} received" in b.text() or b.proc.poll() is not None,
               what="B to catch up with A")
    hold.touch()
    seqs, sums = results(b)
    a.finish()
    [start] = starts(b)[0]
    boundaries = {0: 0, **a.boundaries()}
    assert start > 1, "nothing was dropped"
    assert seqs == list(range(boundaries[start - 1], count))
    assert sums == brute_sums(seqs)
    # what B got fits the bound; with the epoch before, it would not have
    assert (count - boundaries[start - 1]) * payload <= bound
    assert (count - boundaries[start - 2]) * (payload + 200) > bound


def test_retain_is_bounded_in_bytes_by_default(system):
    """retain=1000 epochs of 200 MB published: A keeps at most 64 MiB."""
    a = Job(system, "readings.py", "a", COUNT=10_000, BATCH=100, PAYLOAD=20_000, RATE=0, RETAIN=1000)
    ended = a.finish()[-1]
    assert ended.startswith("ended"), a.text()
    peak = int(ended.split()[1])
    assert peak < 150 * MB, f"A's peak resident memory {peak / MB:.0f} MB"


NEW = 100_000  # the restarted A's first seq (as if it resumed there)


@pytest.mark.parametrize("before, after", [(2, 1), (1, 3)])
def test_on_lost_wait_follows_a_publisher_restarted_with_another_partition_count(system, before, after):
    """B on two kernels, on_lost="wait". A publishes `before` partitions
    (each kernel its own readings), is killed, and comes back with `after`
    partitions (as a job master restarting it on other kernels), its
    readings resuming at seq NEW. B gets each partition's readings from one
    of its epoch boundaries on, every one exactly once; its windows close
    while the new A runs (a partition gone does not hold the watermark
    back, a kernel left without a partition follows A's progress) and equal
    a brute-force sum."""
    hold = system.root / "hold"
    b = Job(system, "sums.py", "b", CORES=2, ON_LOST="wait")
    wait_until(lambda: "subscribing" in b.out.read_text(), what="B to start")
    a1 = Job(system, "readings.py", "a1", COUNT=0, CORES=before, SPLIT=1, EPOCH=SHORT_EPOCH)
    # whole epochs of partition p on every kernel of B that reads it (its records, or its progress):
    # a marker past the last of its connections' starts (two markers of any kernel's were taken for
    # that: B's kernels find the topic apart, its lookups backing off, and the kernel that reads the
    # records, having started last, had none whole when A died)
    received = lambda p: any(int(e) > max(starts(b)[p], default=1 << 62) for e in re.findall(  # noqa: E731
        rf"partition {p}: epoch (\d+) received", b.text()))
    connected = lambda: sum(map(len, starts(b).values()))  # noqa: E731  (B's connections so far)
    # both kernels of B connected (to a partition, or to the progress of all), whole epochs read
    wait_until(lambda: connected() == max(before, 2) and all(received(p) for p in range(before)),
               what="B to read whole epochs of A")
    a1.kill()
    go = system.root / "go"
    # (once go exists, at full speed: its pace would only make the run long)
    a2 = Job(system, "readings.py", "a2", COUNT=3000, CORES=after, SPLIT=1, START=NEW, HOLD=hold, WAIT=go,
             GO=go, EPOCH=SHORT_EPOCH)
    # every kernel of B reads the new A (its own partitions, or their
    # progress) before A makes its readings: B's connections to A1, then A2
    wait_until(lambda: connected() == max(before, 2) + max(after, 2), what="B to read from the new A")
    go.touch()
    # (B's prints and its log share a file: a log line may start right after a window's number)
    closed = lambda: [float(w) for w in re.findall(r"window (\d+(?:\.\d+)?)", b.text())]  # noqa: E731
    wait_until(lambda: a2.text().count("holding") == after, what="the new A to publish everything")
    wait_until(lambda: any(w >= NEW * DT for w in closed()) or b.proc.poll() is not None, timeout=20,
               what="B's windows of the new A to close while it runs")
    assert b.proc.poll() is None, b.text()
    hold.touch()
    seqs, sums = results(b)
    a2.finish()
    assert len(seqs) == len(set(seqs)), "a reading received twice"
    assert sums == brute_sums(seqs)
    for job, first, n in ((a1, 0, before), (a2, NEW, after)):
        got = [s for s in seqs if first <= s < first + NEW]
        boundaries = partition_boundaries(job)
        for p in range(n):
            mine = sorted(s for s in got if (s - first) % n == p)
            assert mine, f"nothing of {job.log.stem}'s partition {p}"
            assert mine[0] in {first + p + n * r for r in boundaries[p]}, "not from an epoch boundary"
            end = mine[-1] + 1 if job is a1 else first + 3000  # (a1 died somewhere)
            assert mine == list(range(mine[0], end, n))


def test_a_partition_that_ended_early_ends_for_a_subscriber_joining_later(system):
    """A's kernel 0 ends its share (and unpublishes its partition) while
    kernel 1 has not begun: B, subscribing then on two kernels, reads
    partition 0's end from the catalog (its server is gone) and all of
    partition 1, and ends without error. (The first partition to end used
    to take the whole topic out of the catalog: B found nothing.)"""
    go = system.root / "go"
    a = Job(system, "readings.py", "a", COUNT=400, CORES=2, SPLIT=1, WAIT=go, WAIT_KERNELS="1")
    wait_until(lambda: "partition 0: ended and unpublished" in a.text(), what="A's kernel 0 to end")
    b = Job(system, "sums.py", "b", CORES=2, TIMEOUT=5)
    # both of B's kernels have read the catalog (kernel 0: partition 0's end)
    # before A's kernel 1 begins: ended too, A's topic leaves the catalog
    ended = "partition 0: ended before this subscriber connected"
    wait_until(lambda: (1 in starts(b) and ended in b.text()) or b.proc.poll() is not None,
               what="B to read partition 1 and partition 0's end")
    go.touch()
    seqs, sums = results(b)
    a.finish()
    assert seqs == list(range(1, 400, 2))
    assert sums == brute_sums(seqs)


# -- timing edges: a subscribing kernel looks up after the topic's end, or connects as it ends ---------


def test_a_subscribing_kernel_that_looks_up_after_the_topic_ended_ends_too(system):
    """B on two kernels; A has one partition, read by B's kernel 0.
    Kernel 1 looks the topic up only after A has ended whole (its topic
    gone from the catalog): it finds it still, ended, because kernel 0 of
    the same job had found it, and B ends with all of A's readings. (It
    used to wait for a publisher until its timeout: TopicError.) Another
    job looking it up now waits for a new publisher."""
    go, gate = system.root / "go", system.root / "gate"
    b = Job(system, "sums.py", "b", CORES=2, GATE=gate, TIMEOUT=3)
    wait_until(lambda: "kernel 0 looks up" in b.text(), what="B's kernel 0 to look up")
    a = Job(system, "readings.py", "a", COUNT=200, WAIT=go)
    wait_until(lambda: 0 in starts(b) or b.proc.poll() is not None, what="B's kernel 0 to read A")
    go.touch()
    assert a.finish()[-1].startswith("ended")
    wait_until(lambda: topics_named(system, system.topic) == [], what="A's topic to leave the catalog")
    gate.touch()
    seqs, sums = results(b)
    assert seqs == list(range(200))
    assert sums == brute_sums(seqs)
    late = Job(system, "sums.py", "late", TIMEOUT=0.3)
    assert "no topic" in late.finish()[-1]["error"]


def test_a_partition_that_ends_as_a_subscriber_connects_is_its_end_not_a_loss(system, monkeypatch):
    """B looks the topic up while A's partition is served, and connects
    only after it has ended and its server stopped: the connection is
    refused, the catalog says the partition ended, and B ends normally
    (it used to count it a lost publisher: PublisherLost)."""
    import kernel.topics._subscribe as subscribe
    from kernel import Dataflow, run

    go = system.root / "go"
    a = Job(system, "readings.py", "a", COUNT=100, WAIT=go, EPOCH=SHORT_EPOCH)
    a.wait_epoch(1)
    read_partition = subscribe.Subscribe._read_partition

    async def after_the_end(self, *args):
        go.touch()  # A makes its readings and ends; its server stops
        await asyncio.get_running_loop().run_in_executor(None, a.finish)
        return await read_partition(self, *args)

    monkeypatch.setattr(subscribe.Subscribe, "_read_partition", after_the_end)
    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    flow = Dataflow("late")
    seqs = flow.subscribe(system.topic, timeout=10).map(lambda r: r[0]).collect()
    run(flow, coordinator=f"127.0.0.1:{system.port}")
    assert seqs.items == []
    assert a.proc.returncode == 0


# -- exactly once across a publisher restarted from its snapshot ---------------------------------


@pytest.mark.parametrize("case", ["keeping up", "behind", "two kernels"])
def test_a_subscriber_gets_each_reading_once_across_a_publisher_resumed_from_its_snapshot(own_system, case):
    """A job with a state_dir publishes (its source keeps its position in
    the snapshots); its process is SIGKILLed mid-epoch and the job master
    resumes it from its last complete epoch. The topic's epochs are the
    job's: an epoch goes out once complete, the restarted publisher sends
    a subscriber coming back what comes after the last epoch it has
    whole. B (on_lost="wait") gets every reading from one of A's epoch
    boundaries to the end exactly once, and its sums equal a brute-force
    sum. (Without it the resumed A published again what followed its
    snapshot, and B got it twice.) A stalled B is epochs behind when A
    dies: the resumed A sends it again the epochs it kept for it. A on two
    kernels: two partitions, each its own readings, each exactly once."""
    system = own_system
    slow, kernels = case == "behind", 2 if case == "two kernels" else 1
    count = 4000 if slow or kernels == 2 else 2000  # (A makes 1,000 readings a second a kernel)
    go = system.root / "go"  # (the resumed A makes its readings at full speed once B reads from it)
    # A makes no reading until B has subscribed (its readings take A 2 s: on a loaded
    # machine B started later than that, and found A ended)
    subscribed = system.root / "subscribed"
    system.env.update(TOPIC=system.topic, COUNT=str(count), LOG_TOPICS="1", RESUMABLE="1", GO=str(go),
                      WAIT=str(subscribed))
    if slow:
        system.env.update(PAYLOAD="5000")  # (about 1 MB an epoch: B's window is 4 of them)
    if kernels == 2:
        system.env.update(SPLIT="1")  # kernel k of 2 makes seqs k, k + 2, ...
    executor = system.start_executor(cores=2)
    system.executors_up(1)
    (system.root / "readings.py").write_text((HERE / "readings.py").read_text())
    done = system.cli("submit", "readings.py", "--state-dir", system.root / "state",
                      "--epoch-interval", "0.2", "--cores", kernels)
    assert done.returncode == 0, done.stderr
    job = done.stdout.split()[0]
    log = system.root / "executor1" / "logs" / f"{job}.log"
    fast, stall = system.root / "fast", system.root / "stall"
    b = Job(system, "sums.py", "b", ON_LOST="wait", **({"SLOW": 0.001, "FAST": fast, "STALL": stall}
                                                         if slow else {}))
    wait_until(lambda: all(starts(b)[p] for p in range(kernels)), what="B to subscribe to the first attempt")
    subscribed.touch()
    read = b.epochs_received()  # (epochs A ended before it made a reading)
    wait_until(lambda: b.epochs_received() >= read + 3 * kernels, what="B to read from the first attempt")
    if slow:
        # B stops reading (its kernel stalls at its next batch): A sends it
        # at most a window (~4 epochs), queues ~8 more for it, and each goes
        # into A's snapshots until B has it; after 9 A dies
        released = lambda: max(attempt_boundaries(log, job)[1], default=0)  # noqa: E731
        stalled_at = released()
        stall.touch()
        wait_until(lambda: released() >= stalled_at + 9, what="A to go on without B")

    # The resumed A makes no reading until B is back: under load B once came
    # back after the resumed A had made all its readings and ended ("the new
    # publisher had ended before this subscriber reached it")
    subscribed.unlink()
    os.kill(wait_until(lambda: readings_process(executor), what="the job's process"), signal.SIGKILL)
    fast.touch()  # (B has fallen behind A: now it may catch up)
    wait_until(lambda: all(len(starts(b)[p]) >= 2 for p in range(kernels)) or b.proc.poll() is not None,
               what="B to read from the resumed A")
    subscribed.touch()
    go.touch()
    seqs, sums = results(b)
    assert system.job(job)["restarts"] == 1
    resumed = int(re.search(r"resuming from epoch (\d+)", log.read_text())[1])
    if slow:  # B had fewer epochs than A's snapshot: A sent it again those it lacked
        assert starts(b)[0][1] <= resumed, (starts(b), resumed)
    assert len(seqs) == len(set(seqs)), f"{len(seqs) - len(set(seqs))} readings received twice"
    for p in range(kernels):
        mine = sorted(s for s in seqs if s % kernels == p)
        assert mine == list(range(mine[0], count, kernels))
        first = attempt_boundaries(log, job, p)[1]
        assert mine[0] in {p + kernels * n for n in (0, *first.values())}, "not from an epoch boundary"
    assert sums == brute_sums(seqs)


ENDED_PUBLISHER = """\
import logging, os, sys
from kernel import Dataflow, Source, run

class Wait(Source):
    # keeps the run going until the GO file exists
    def poll(self):
        if os.path.exists(os.environ["GO"]):
            return False
        self.context.kernel.call_later(0.02, self.wake)
        return None

    def on_epoch(self, epoch):
        return 0

    def restore(self, snapshot):
        pass

logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
logging.getLogger("kernel.topics").setLevel(logging.DEBUG)
flow = Dataflow("ended")
flow.from_iterable(range(100)).publish(os.environ["TOPIC"])
flow.source(Wait, name="wait").collect()
run(flow, coordinator=sys.argv[1], state_dir=os.environ["STATE"], epoch_interval=0.05)
print("finished", flush=True)
"""


def test_a_run_resumed_where_its_publisher_had_ended_ends_that_publisher(system):
    """A job with a state_dir whose publishing branch has ended (its end
    out, in a complete epoch) while another branch runs on, is killed and
    run again from its state_dir: its publisher, ended in the snapshot,
    ends again at once and the run finishes (it used to wait for an end
    that never came, for ever)."""
    script, go = system.root / "ended.py", system.root / "go"
    script.write_text(ENDED_PUBLISHER)
    env = dict(system.env, TOPIC=system.topic, GO=str(go), STATE=str(system.root / "state"))

    def start(name):
        with open(system.root / f"{name}.log", "wb") as log:
            return subprocess.Popen([PYTHON, str(script), f"127.0.0.1:{system.port}"], env=env, stderr=log,
                                    stdout=subprocess.PIPE, text=True, cwd=system.root)

    first = start("first")
    wait_until(lambda: "ended and unpublished" in (system.root / "first.log").read_text(),
               what="the publishing branch to end")
    first.kill()
    first.wait()
    go.touch()
    second = start("second")
    try:
        out, _ = second.communicate(timeout=30)
    finally:
        second.kill()
    assert second.returncode == 0 and "finished" in out, (system.root / "second.log").read_text()
    assert "the publisher had ended in the snapshot" in (system.root / "second.log").read_text()
    assert topics_named(system, system.topic) == []


def test_a_subscriber_waiting_for_a_boundary_gets_the_last_records_of_a_job_with_snapshots(system):
    """A job with a state_dir and epochs longer than the test: its
    readings wait for an epoch to complete, and the end is the first
    boundary. B connects after A has made them (so it waits for a
    boundary), then A ends: B gets them all, as a whole epoch (they went
    out before B was started, and B got only the end)."""
    hold = system.root / "hold"
    a = Job(system, "readings.py", "a", COUNT=200, HOLD=hold, STATE_DIR=system.root / "state", JOB_EPOCH=60)
    wait_until(lambda: "holding" in a.text() or a.proc.poll() is not None, what="A to make its readings")
    b = Job(system, "sums.py", "b", ON_LOST="wait")
    wait_until(lambda: "a subscriber connected" in a.text() or b.proc.poll() is not None,
               what="B to connect")
    hold.touch()
    seqs, sums = results(b)
    assert a.finish()[-1].startswith("ended")
    assert seqs == list(range(200))
    assert sums == brute_sums(seqs)


def test_a_restarted_apps_kernels_registering_at_once_replace_the_old_registration(tmp_path):
    """An app publishing on two kernels was killed (its registration stays
    behind, its ports closed) and runs again: its kernels register their
    partitions at the same moment. Each finds the old registration and
    looks whether the old publisher still answers; meanwhile the other
    kernel's registration lands. Neither may take the new publisher's own
    address for the old one's (it was refused: "published by app:old,
    which is running"), and the second must not delete the first's."""
    from kernel.system._catalog import Catalog
    from kernel.system._topics import request

    catalog = Catalog(tmp_path / "data")
    listening = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]  # the new servers
    dead = [free_port(), free_port()]  # the old servers' ports: closed
    try:
        db = catalog._db
        db.execute("INSERT INTO topics VALUES ('t', 'app:old', 0, ?)",
                   (json.dumps({"id": "old", "partitions": 2}),))
        for partition, port in enumerate(dead):
            db.execute("INSERT INTO publications VALUES ('t', 'app:old', ?, ?)",
                       (partition, f"127.0.0.1:{port}"))
        new = [f"127.0.0.1:{s.getsockname()[1]}" for s in listening]

        def publish(partition: int) -> dict:
            return {"name": "t", "id": "new", "job": "app:new", "kind": "stream", "partitions": 2,
                    "partition": partition, "address": new[partition]}

        async def probe(address, kind):  # (the new servers answer as the new publisher)
            return "new" if address in new else None

        async def both():
            return await asyncio.gather(*(request(catalog, "topic_publish", publish(p), probe)
                                          for p in range(2)), return_exceptions=True)

        assert asyncio.run(both()) == [{}, {}]
        reply = asyncio.run(request(catalog, "topic_lookup", {"name": "t", "job": "app:b"}))
        assert (reply["found"], reply["id"], reply["addresses"]) == (True, "new", new)
    finally:
        for server in listening:
            server.close()
        catalog.close()


def test_only_the_old_publishers_own_addresses_say_it_still_runs(tmp_path):
    """Whether an app's old registration still publishes is asked of its own
    addresses only: a partition the new publisher has registered meanwhile
    answers (its server runs), and is not the old one's."""
    from kernel.system._catalog import Catalog
    from kernel.system._topics import _still_published

    catalog = Catalog(tmp_path / "data")
    server = socket.create_server(("127.0.0.1", 0))
    dead = free_port()
    try:
        db = catalog._db
        db.execute("INSERT INTO publications VALUES ('t', 'app:old', 0, ?)", (f"127.0.0.1:{dead}",))
        db.execute("INSERT INTO publications VALUES ('t', 'app:new', 1, ?)",
                   (f"127.0.0.1:{server.getsockname()[1]}",))
        answers = {f"127.0.0.1:{server.getsockname()[1]}": "new-id"}  # (what each address's handshake says)

        async def probe(address, kind):
            return answers.get(address)

        assert asyncio.run(_still_published(catalog, "t", {"job": "app:old", "id": "new-id"}, probe)) is False
        assert asyncio.run(_still_published(catalog, "t", {"job": "app:new", "id": "new-id"}, probe)) is True
    finally:
        server.close()
        catalog.close()


def test_a_catalog_connection_left_idle_across_a_coordinator_restart_is_opened_again(own_system):
    """Found by a review: a publisher's or subscriber's connection to the
    coordinator, idle while the coordinator was killed and started again
    on the same --data, still looked open; its next request failed with
    ClientConnectionResetError and ended the job. Now the request goes
    again on a new connection (the old process took nothing of it)."""
    from kernel.topics._directory import Directory

    system = own_system

    async def ask_across_a_restart() -> tuple[dict, dict]:
        directory = Directory(("127.0.0.1", system.port), system.env["KERNEL_SECRET"].encode())
        try:
            before = await directory.request("status")
            system.coordinator.kill()
            system.coordinator.wait()
            await asyncio.to_thread(system.start_coordinator)
            await asyncio.to_thread(wait_until, lambda: system.coordinator_log.read_text().count(
                "coordinator listening") == 2, what="the coordinator to listen again")
            return before, await directory.request("status")
        finally:
            await directory.close()

    before, after = asyncio.run(ask_across_a_restart())
    assert before["executors"] == after["executors"] == [] and "jobs" in after


def test_a_batch_over_a_frames_limit_goes_as_several_frames_and_a_record_over_it_is_an_error(system):
    """Found by a review: a batch encoded to more than the 16 MiB a
    subscriber takes in one frame was refused by it: with on_lost="wait"
    every such epoch was lost without a word (the subscriber ended with
    nothing), with "fail" it ended on a misleading ConnectionLost. The
    publisher now sends such a batch in halves; one record over the limit
    fails the publisher, saying so."""
    go = system.root / "go"
    a = Job(system, "readings.py", "a", COUNT=300, BATCH=100, PAYLOAD=200_000, WAIT=go)
    a.wait_published()
    b = Job(system, "sums.py", "b")
    wait_until(lambda: "starts at epoch" in a.text(), what="B to start at one of A's epoch boundaries")
    go.touch()  # three batches of ~20 MB
    seqs, sums = results(b)
    a.finish()
    assert seqs == list(range(300)) and sums == brute_sums(seqs)

    system.topic += "-one-record"
    go = system.root / "go-one"
    too_big = Job(system, "readings.py", "c", COUNT=1, BATCH=1, PAYLOAD=17 << 20, WAIT=go)
    too_big.wait_published()
    d = Job(system, "sums.py", "d")
    wait_until(lambda: "starts at epoch" in too_big.text(), what="D to start at one of C's epoch boundaries")
    go.touch()
    too_big.finish()
    d.finish()
    assert too_big.proc.returncode == 1
    assert re.search(rf"a record of topic '{system.topic}' is 17,8\d\d,\d\d\d bytes encoded, over the 16 MiB "
                     r"a topic's frame carries: \(0, 0\.0, 0, 'xxx", too_big.text()), too_big.text()


RECORDS_OF_A_CLASS = """
import logging, os, sys
from dataclasses import dataclass
from kernel import Dataflow, Source, run

@dataclass
class Reading:
    seq: int
    value: float

class Made(Source):
    def open(self, context):
        self.seq, self.ctx = 0, context
    def poll(self):
        if self.seq < 50:
            self.emit([Reading(n, n / 2) for n in range(self.seq, self.seq + 10)])
            self.seq += 10
            return True
        if os.path.exists(os.environ["DONE"]):
            return False
        self.ctx.kernel.call_later(0.02, self.wake)
        return None

logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
logging.getLogger("kernel.topics").setLevel(logging.DEBUG)
flow = Dataflow("made")
made = flow.source(Made, name="made")
made.publish(os.environ["TOPIC"], record_type=Reading, retain=100, epoch_interval=0.05)
run(flow, coordinator=sys.argv[1])
"""


@dataclasses.dataclass
class Reading:  # the publisher's `__main__.Reading`, here `test_topics.Reading`
    seq: int
    value: float


def test_records_of_a_class_named_alike_in_another_module_are_read_as_the_subscribers(system, monkeypatch):
    """Found by a review: the record-type check takes `__main__.Reading`
    (a script) and `pipeline.Reading` (a job) as the same class, as it
    must, but the records, pickled, named the publisher's module: every
    batch then failed to unpickle in the subscriber."""
    from kernel import Dataflow, run_async

    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    (system.root / "made.py").write_text(RECORDS_OF_A_CLASS)
    done = system.root / "done"
    environ = dict(system.env, TOPIC=system.topic, DONE=str(done))
    with open(system.root / "made.log", "wb") as log:
        publisher = subprocess.Popen([PYTHON, str(system.root / "made.py"), f"127.0.0.1:{system.port}"],
                                     stdout=log, stderr=log, env=environ, cwd=system.root)
    try:
        text = (system.root / "made.log").read_text
        wait_until(lambda: " served at " in text() or publisher.poll() is not None, what="the topic")
        assert " served at " in text(), text()
        flow = Dataflow("app")
        got = flow.subscribe(system.topic, timeout=10, record_type=Reading).collect()

        async def app():
            subscriber = asyncio.ensure_future(run_async(flow, coordinator=f"127.0.0.1:{system.port}"))
            deadline = asyncio.get_running_loop().time() + 30
            while "a subscriber connected from" not in text():
                assert not subscriber.done(), subscriber.exception()
                assert asyncio.get_running_loop().time() < deadline, text()
                await asyncio.sleep(0.02)
            done.touch()
            await asyncio.wait_for(subscriber, 30)

        asyncio.run(app())
        assert publisher.wait(30) == 0, text()
    finally:
        publisher.kill()
        publisher.wait()
    assert got.items == [Reading(n, n / 2) for n in range(50)]


def test_a_record_not_of_the_topics_record_type_fails_its_publisher_before_anyone_subscribes(system,
                                                                                             monkeypatch):
    """Found by a review: with no subscriber (and no retain, no snapshots)
    the publisher skipped its batches before the type check, so a wrong
    record went unnoticed until someone subscribed, then failed the job."""
    from kernel import Dataflow, OperatorError, run

    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    flow = Dataflow("wrong")
    flow.from_iterable(["a"]).publish(system.topic, record_type=int)
    with pytest.raises(OperatorError, match=rf"topic '{system.topic}' was published with record_type=int, "
                                            r"but a record is 'a'"):
        run(flow, coordinator=f"127.0.0.1:{system.port}")


def test_a_lookup_that_may_wait_waits_through_a_coordinator_down_longer_than_a_dial(own_system, caplog):
    """Found by a review (in the code): a lookup that may wait (a subscriber
    with on_lost="wait" looking for a new publisher) failed, and ended its
    job, when the coordinator stayed down longer than one dial's timeout.
    It now looks the topic up again until the coordinator answers."""
    import logging

    from kernel.topics._directory import Directory

    system = own_system
    key = system.env["KERNEL_SECRET"].encode()

    async def scenario() -> dict:
        directory = Directory(("127.0.0.1", system.port), key, timeout=0.3)
        try:
            system.coordinator.kill()
            system.coordinator.wait()
            lookup = asyncio.ensure_future(directory.lookup("comes-later", None))
            while not (lookup.done() or "up again until it answers" in caplog.text):
                await asyncio.sleep(0.02)
            assert not lookup.done(), lookup.exception()
            await asyncio.to_thread(system.start_coordinator)
            await asyncio.to_thread(wait_until, lambda: system.coordinator_log.read_text().count(
                "coordinator listening") == 2, what="the coordinator to listen again")
            publisher = Directory(("127.0.0.1", system.port), key)
            try:
                await publisher.request("topic_publish", name="comes-later", id="later", job="app:later",
                                        kind="stream", record_type=None, partitions=1, partition=0,
                                        address="127.0.0.1:9")
            finally:
                await publisher.close()
            return await asyncio.wait_for(lookup, 10)
        finally:
            await directory.close()

    with caplog.at_level(logging.WARNING, logger="kernel.topics"):
        found = asyncio.run(scenario())
    assert found["found"] and found["id"] == "later"
    assert "answers again" in caplog.text
