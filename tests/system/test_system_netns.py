"""The system on network-namespace "hosts" (tests/kernel/_netns.py: one
switch, an address each): the coordinator and the CLI on 10.231.0.1,
executors on .2 and .3, so a job's processes link across the switch as on
machines of their own; a pulled cable makes the executor behind it lost
(no close, only silence), its job restarts on the other host, and the
executor cut off has killed its process before that (fencing)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from _system import System, descendants, wait_until

from tests._crash_runs import assert_each_once

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
from _netns import Switch


@pytest.fixture
def hosts(tmp_path):
    switch = Switch(3).open()  # (root is needed: the tests fail, not skip, without it)
    system = System(tmp_path, switch=switch)
    try:
        system.start_coordinator()
        system.start_executor(cores=1)
        system.start_executor(cores=1)
        system.executors_up(2)
        yield system
    finally:
        system.close()
        switch.close()


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def test_a_job_on_two_hosts_completes_with_exact_results(hosts, tmp_path):
    out = tmp_path / "out"
    pipeline = write(tmp_path / "words.py", f"""\
        from kernel import Dataflow

        flow = Dataflow("words")
        words = flow.from_iterable([f"w{{n % 13}} w{{n % 5}}" for n in range(5000)], batch_size=100)
        words.flat_map(str.split).key_by(lambda w: w).count().to_files({str(out)!r})
        """)
    done = hosts.cli("submit", pipeline, "--processes", "2", "--wait")
    assert done.returncode == 0, done.stderr
    expected = Counter(w for n in range(5000) for w in (f"w{n % 13}", f"w{n % 5}"))
    got = [tuple(json.loads(line)) for f in sorted(out.glob("part-*.jsonl"))
           for line in f.read_text().splitlines()]
    assert sorted(got) == sorted(expected.items())
    state = hosts.job(done.stdout.splitlines()[0])
    assert sorted(state["placement"]) == sorted(e["id"] for e in hosts.status()["executors"])


def test_a_pulled_cable_loses_the_executor_and_its_job_restarts_on_the_other_host(hosts, tmp_path):
    pipeline = write(tmp_path / "endless.py", """\
        import time
        from kernel import Dataflow

        flow = Dataflow("endless")
        flow.from_iterable(range(10**9)).map(lambda n: time.sleep(0.01) or n).sink(id)
        """)
    job = hosts.cli("submit", pipeline).stdout.splitlines()[0]
    wait_until(lambda: hosts.job(job)["status"] == "running", what="the job to run")
    (first,) = hosts.job(job)["placement"]
    behind = next(i for i, p in enumerate(hosts.executors) if hosts.executor_id(p) == first)
    hosts.switch.cut(behind + 1)

    def elsewhere():
        state = hosts.job(job)
        return state["status"] == "running" and state["placement"] != [first]

    stale = hosts.executors[behind]
    wait_until(elsewhere, timeout=30, what="the job to run on the other host", every=0.2)
    assert "silent for" in hosts.coordinator_log.read_text()
    # fenced: cut off for 0.8 of the coordinator's executor timeout, the
    # executor had killed its process already
    assert descendants(stale.pid) == [stale.pid]
    log = (hosts.root / f"executor{behind + 1}.log").read_text()
    assert f"no answer from the coordinator for over 1.6 s: stopping 1 job process(es) ({job} attempt 1 " \
           "process 0), which it starts elsewhere after 2 s without a word" in log, log
    subprocess.run(["ip", "-n", hosts.switch.hub, "link", "set", f"v{behind + 1}", "up"], check=True)
    wait_until(lambda: hosts.job(job)["status"] == "running" and len(hosts.status()["executors"]) == 2
               and all(e["state"] == "up" for e in hosts.status()["executors"]), timeout=30,
               what="the executor back once the cable is", every=0.2)
    assert hosts.job(job)["restarts"] == 1
    assert hosts.cli("kill", job).returncode == 0


def test_a_job_with_a_shared_state_dir_restarts_on_fewer_processes_on_another_host(hosts, tmp_path):
    """A job of two processes on two hosts, submitted with
    --shared-state-dir (its state_dir is one directory both machines see):
    one executor SIGKILLed, the job resumes as one process on the other
    host from the cluster's snapshots, every record once, counts exact.
    (Without the flag, executors on two hosts, the job waits for two: the
    test then times out.)"""
    out, counts, count = tmp_path / "out", tmp_path / "counts", 3000
    pipeline = write(tmp_path / "slow.py", f"""\
        import os, time
        from kernel import Dataflow

        def slow(n):
            if not os.path.exists({str(tmp_path / "go")!r}):
                time.sleep(0.002)
            return n

        flow = Dataflow("slow")
        numbers = flow.from_iterable(range({count}), batch_size=50).map(slow)
        numbers.to_files({str(out)!r})
        numbers.key_by(lambda n: n % 7).count().to_files({str(counts)!r})
        """)
    job = hosts.cli("submit", pipeline, "--processes", "2", "--state-dir", tmp_path / "state",
                    "--shared-state-dir", "--epoch-interval", "0.2").stdout.splitlines()[0]
    wait_until(lambda: list(out.glob("part-*.jsonl")), what="a first complete epoch")
    hosts.executors[1].kill()
    wait_until(lambda: hosts.job(job)["status"] == "running" and hosts.job(job)["processes"] == 1,
               timeout=60, what="the job to run as one process", every=0.2)
    (tmp_path / "go").touch()
    wait_until(lambda: hosts.job(job)["status"] in ("completed", "failed"), timeout=60,
               what="the rescaled job to end", every=0.2)
    state = hosts.job(job)
    assert (state["status"], state["restarts"]) == ("completed", 1), state
    assert state["placement"] == [hosts.executor_id(hosts.executors[0])]

    def lines(directory):
        return [json.loads(x) for f in sorted(directory.glob("part-*.jsonl"))
                for x in f.read_text().splitlines()]

    assert_each_once(lines(out), count)
    assert sorted(map(tuple, lines(counts))) == sorted(Counter(n % 7 for n in range(count)).items())
    assert "rescaled from 2 process(es) of 1 core(s) to 1 of 1" in hosts.coordinator_log.read_text()
