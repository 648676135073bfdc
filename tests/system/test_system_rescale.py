"""A job with a state_dir whose executor is lost restarts on the cores left
elsewhere: fewer cores, or fewer processes on one host, than its snapshots
were taken on, its state moved by key group (issue 16's rescale on resume,
issue 17's restart)."""

from __future__ import annotations

import json
import signal
import textwrap
from collections import Counter

from _system import System, wait_until

SLOW = """\
import time
from kernel import Dataflow

def slow(n):
    time.sleep({pause})
    return n

flow = Dataflow("slow")
numbers = flow.from_iterable(range({count}), batch_size=50).map(slow)
numbers.to_files({out!r})
numbers.key_by(lambda n: n % 7).count().to_files({counts!r})
"""


def lines(directory) -> list:
    return [json.loads(line) for f in sorted(directory.glob("part-*.jsonl"))
            for line in f.read_text().splitlines()]


def test_a_job_with_state_restarts_on_fewer_cores_and_resumes_exactly(tmp_path):
    system = System(tmp_path)
    try:
        system.start_coordinator()
        big, small = system.start_executor(cores=2), system.start_executor(cores=1)
        system.executors_up(2)
        out, counts, count = tmp_path / "out", tmp_path / "counts", 3000
        pipeline = tmp_path / "slow.py"
        pipeline.write_text(textwrap.dedent(SLOW.format(pause=0.001, count=count, out=str(out),
                                                        counts=str(counts))))
        job = system.cli("submit", pipeline, "--cores", "2", "--state-dir", tmp_path / "state",
                         "--epoch-interval", "0.2").stdout.splitlines()[0]
        wait_until(lambda: list(out.glob("part-*.jsonl")), what="a first complete epoch")
        assert system.job(job)["placement"] == [system.executor_id(big)]
        big.send_signal(signal.SIGKILL)
        wait_until(lambda: system.job(job)["status"] in ("completed", "failed"), timeout=60,
                   what="the rescaled job to end", every=0.2)
        state = system.job(job)
        assert (state["status"], state["restarts"], state["cores"]) == ("completed", 1, 1), state
        assert state["placement"] == [system.executor_id(small)]
        assert Counter(lines(out)) == Counter(range(count))
        assert sorted(map(tuple, lines(counts))) == sorted(Counter(n % 7 for n in range(count)).items())
        assert "rescaled from 1 process(es) of 2 core(s) to 1 of 1" in system.coordinator_log.read_text()
        assert "was written by 2 kernels; this run has 1" in system.cli("logs", job).stdout
    finally:
        system.close()


def test_a_job_of_two_processes_with_state_restarts_as_one_on_the_same_host(tmp_path):
    """Its two executors are on one host, so its state_dir is one directory:
    one executor SIGKILLed, the job resumes as one process on the other,
    from the cluster's snapshots, every record once and its counts exact."""
    system = System(tmp_path)
    try:
        system.start_coordinator()
        first, second = system.start_executor(cores=1), system.start_executor(cores=1)
        system.executors_up(2)
        out, counts, count = tmp_path / "out", tmp_path / "counts", 3000
        pipeline = tmp_path / "slow.py"
        pipeline.write_text(textwrap.dedent(SLOW.format(pause=0.001, count=count, out=str(out),
                                                        counts=str(counts))))
        job = system.cli("submit", pipeline, "--processes", "2", "--cores", "1", "--state-dir",
                         tmp_path / "state", "--epoch-interval", "0.2").stdout.splitlines()[0]
        wait_until(lambda: list(out.glob("part-*.jsonl")), what="a first complete epoch")
        assert len(system.job(job)["placement"]) == 2
        second.send_signal(signal.SIGKILL)
        wait_until(lambda: system.job(job)["status"] in ("completed", "failed"), timeout=60,
                   what="the rescaled job to end", every=0.2)
        state = system.job(job)
        assert (state["status"], state["restarts"], state["processes"]) == ("completed", 1, 1), state
        assert state["placement"] == [system.executor_id(first)]
        assert Counter(lines(out)) == Counter(range(count))
        assert sorted(map(tuple, lines(counts))) == sorted(Counter(n % 7 for n in range(count)).items())
        assert "rescaled from 2 process(es) of 1 core(s) to 1 of 1" in system.coordinator_log.read_text()
        assert "was written by 2 kernels; this run has 1" in system.cli("logs", job).stdout
    finally:
        system.close()
