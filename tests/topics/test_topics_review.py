"""Review tests for topics between jobs: real processes (a coordinator, a
publishing app, a subscribing app) and sockets; each compares what the
subscriber received with a plain-Python reference."""

from __future__ import annotations

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
    found = System(tmp_path)
    found.start_coordinator()
    yield found
    found.close()


def _spawn(system: System, tmp_path: Path, name: str, script: str, *args: str) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / f"{name}.py"
    path.write_text(script)
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as err, open(tmp_path / f"{name}.out", "wb") as out:
        proc = subprocess.Popen([PYTHON, str(path), f"127.0.0.1:{system.port}", *args, str(ROOT)],
                                stdout=out, stderr=err, env=system.env, cwd=tmp_path)
    return proc, log


def test_one_topic_name_published_twice_in_one_flow_is_refused_or_delivers_both_streams(system, tmp_path):
    """Two streams of one flow published under one name: both register as
    partition 0 of the same publisher id (`_directory.new_id()` is one per
    run, and `topic_publish` takes a known id as the same publisher), so the
    second's address silently replaces the first's in the catalog, and the
    first stream's end ends the topic. Expected: the flow is refused (a
    name published twice), or a subscriber gets both streams' records."""
    go = tmp_path / "go"
    pub, pub_log = _spawn(system, tmp_path, "pub", PUBLISHER, str(go), "twice")
    procs = [pub]
    try:
        wait_until(lambda: pub.poll() is not None or pub_log.read_text().count(" served at ") == 2,
                   timeout=20, what="both publishers to register (or the flow to be refused)")
        if pub.poll() is not None:  # refused: the error says why
            assert pub.returncode != 0 and "twice" in pub_log.read_text(), pub_log.read_text()
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
    env = dict(system.env, TOPIC="ends-while-down", COUNT="100", HOLD=str(hold), RATE="1000")
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
            pub.wait(12)  # past the Directory's 10 s of tries
        except subprocess.TimeoutExpired:  # still waiting for the coordinator: bring it back
            system.coordinator_log.rename(tmp_path / "coordinator-1.log")
            system.start_coordinator()
            pub.wait(20)
        assert pub.returncode == 0, log.read_text()[-800:]
    finally:
        if pub.poll() is None:
            pub.kill()
            pub.wait()
