"""Session 38: `KERNEL_HEARTBEAT` is the default heartbeat of a run's links
too, as the README says ("the default for every link, a topic's too"). A
run's default was a fixed 2.5 s (`kernel.execution._plan`), so a cluster
started with KERNEL_HEARTBEAT=0.3 gave up a frozen peer after 5 s, not
0.6 s. A value under the 0.1 s that `heartbeat=` takes at least is said
and the default used, as for any other bad value."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from _ports import descendants, free_ports, wait_until

# (session 39: read when a run is planned or a link starts, not at import;
# tests/kernel/test_session39_heartbeat_read_at_run.py sets it after the import)
DEFAULTS = ("import logging; logging.basicConfig(); from kernel import Dataflow; "
            "from kernel._facade import plan_for; from kernel.execution._cluster import cluster_plan; "
            "flow = Dataflow('f'); flow.from_iterable([1]).collect(); "
            "print(plan_for(lambda: flow, peers='127.0.0.1:7001', secret='s').cluster.heartbeat, "
            "cluster_plan(0, '127.0.0.1:7001', 1, secret='s').heartbeat, "
            "__import__('kernel.topics._services').topics._services._heartbeat() / 2)")


def _defaults(heartbeat: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERNEL_HEARTBEAT=heartbeat)
    return subprocess.run([sys.executable, "-c", DEFAULTS], env=env, capture_output=True, text=True,
                          timeout=60)


def test_kernel_heartbeat_is_the_default_of_a_run_and_of_the_links():
    done = _defaults("0.4")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.4", "0.4", "0.4"]


def test_a_kernel_heartbeat_under_the_least_is_said_and_the_default_used():
    done = _defaults("0.01")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2.5", "2.5", "2.5"]
    assert "KERNEL_HEARTBEAT='0.01' is under the 0.1 s it must be at least: 2.5 s used" in done.stderr


PIPELINE = """
import asyncio, os
from pathlib import Path
from kernel import Dataflow

async def forever():
    Path(os.environ["STARTED"], f"started-{os.getpid()}").touch()
    i = 0
    while True:
        yield i
        i += 1
        await asyncio.sleep(0.01)

flow = Dataflow("endless")
flow.from_async_iterable(forever()).key_by(lambda n: n % 5).count().collect()
"""


def test_a_cluster_started_with_kernel_heartbeat_gives_a_frozen_peer_up_after_two_of_its_periods(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    peers = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    env = dict(os.environ, KERNEL_HEARTBEAT="0.3", KERNEL_SECRET="heartbeat-secret", STARTED=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--quiet",
                               "--process-id", str(i), "--peers", peers], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in (0, 1)]
    frozen: list[int] = []
    try:
        wait_until(lambda: len(list(Path(tmp_path).glob("started-*"))) == 2, what="the cluster to run")
        frozen = [procs[1].pid, *descendants(procs[1].pid)]  # the process, its kernel and its relay
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        _, stderr = procs[0].communicate(timeout=60)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in procs:
            proc.kill()
            proc.communicate()
    assert procs[0].returncode != 0
    # (with a run's default of 2.5 s: "did not answer for 5 s")
    assert "did not answer for 0.6 s (peer dead or network cut)" in stderr, stderr
