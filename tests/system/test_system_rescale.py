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

from tests._crash_runs import assert_each_once

SLOW = """\
import os
import time
from kernel import Dataflow

def slow(n):
    if not os.path.exists({go!r}):  # slow until the test lets it go (once it has killed an executor)
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


def killed_and_resumed(tmp_path, executor_cores: tuple[int, ...], submit: list[str], victim: int,
                       rescaled: str) -> dict:
    """Executors of `executor_cores`; the SLOW job submitted with `submit`
    and a state_dir; executor `victim` (one the job runs on) SIGKILLed once
    an epoch is complete. The job must complete after one restart on the
    executors left, say how it was rescaled (`rescaled`), and its files hold
    every record once with exact counts. Returns the job's last state."""
    system = System(tmp_path)
    try:
        system.start_coordinator()
        executors = [system.start_executor(cores=cores) for cores in executor_cores]
        system.executors_up(len(executors))
        out, counts, count = tmp_path / "out", tmp_path / "counts", 3000
        pipeline = tmp_path / "slow.py"
        pipeline.write_text(textwrap.dedent(SLOW.format(pause=0.001, count=count, out=str(out),
                                                        counts=str(counts), go=str(tmp_path / "go"))))
        job = system.cli("submit", pipeline, *submit, "--state-dir", tmp_path / "state",
                         "--epoch-interval", "0.2").stdout.splitlines()[0]
        wait_until(lambda: list(out.glob("part-*.jsonl")), what="a first complete epoch")
        assert system.executor_id(executors[victim]) in system.job(job)["placement"]
        executors[victim].send_signal(signal.SIGKILL)
        (tmp_path / "go").touch()  # the restarted run need not be slow
        wait_until(lambda: system.job(job)["status"] in ("completed", "failed"), timeout=60,
                   what="the rescaled job to end", every=0.2)
        state = system.job(job)
        assert (state["status"], state["restarts"]) == ("completed", 1), state
        assert state["placement"] == [system.executor_id(e) for i, e in enumerate(executors) if i != victim]
        assert_each_once(lines(out), count)
        assert sorted(map(tuple, lines(counts))) == sorted(Counter(n % 7 for n in range(count)).items())
        assert rescaled in system.coordinator_log.read_text()
        assert "was written by 2 kernels; this run has 1" in system.cli("logs", job).stdout
        return state
    finally:
        system.close()


def test_a_job_with_state_restarts_on_fewer_cores_and_resumes_exactly(tmp_path):
    state = killed_and_resumed(tmp_path, (2, 1), ["--cores", "2"], 0,
                               "rescaled from 1 process(es) of 2 core(s) to 1 of 1")
    assert state["cores"] == 1


def test_a_job_of_two_processes_with_state_restarts_as_one_on_the_same_host(tmp_path):
    """Its two executors are on one host, so its state_dir is one directory:
    one executor SIGKILLed, the job resumes as one process on the other,
    from the cluster's snapshots, every record once and its counts exact."""
    state = killed_and_resumed(tmp_path, (1, 1), ["--processes", "2", "--cores", "1"], 1,
                               "rescaled from 2 process(es) of 1 core(s) to 1 of 1")
    assert state["processes"] == 1
