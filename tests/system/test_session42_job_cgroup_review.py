"""Session 42 review: a job process that is itself a cgroup manager (a
nested executor, a container runtime, a test harness) makes cgroups below
its own. `cgroup.kill` ends their processes with the job's, but a cgroup
with a child cgroup cannot be removed (rmdir: EBUSY): the executor's
`os.rmdir` of the job's cgroup failed at the job's end, at close(), and at
the next executor's start (`_remove_the_dead_executors`), and the job's
cgroup and those below it were left for good (under a Slurm step or a
systemd unit, in the way of its own cleanup). Each is now removed deepest
first (`kernel.system._job_cgroup._remove`).

In this process: one executor, never connected (its id set as a register
would); its job makes `worker` below its own cgroup and starts a child there."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from kernel.system._job_cgroup import JobCgroups, join_in_child
from kernel.system._wire import file_fields
from tests.system.test_session40_job_children_end import _closed, _completed, _executor, _gone
from tests.system.test_session42_job_cgroup import _an_ended_pid, _cgroups_home

MANAGER = """\
import os
import subprocess
from kernel import Dataflow

def step(n):
    with open("/proc/self/cgroup") as f:
        mine = next(line[3:].strip() for line in f if line.startswith("0::"))
    worker = {home!r} + mine[len({home_path!r}):] + "/worker"
    os.mkdir(worker)
    def join():
        with open(worker + "/cgroup.procs", "w") as f:
            f.write("0")
    child = subprocess.Popen(["sleep", "60"], preexec_fn=join)
    with open({pid_file!r} + ".partial", "w") as f:
        f.write(str(child.pid))
    os.replace({pid_file!r} + ".partial", {pid_file!r})
    return n

flow = Dataflow("manager")
flow.from_iterable(range(1)).map(step).sink(id)
"""


def _own_cgroup_path() -> str:
    """This process's cgroup, the executor's home, as /proc/self/cgroup's `0::` line names it."""
    with open("/proc/self/cgroup") as f:
        return next(line[3:].strip() for line in f if line.startswith("0::"))


async def test_a_job_that_made_cgroups_of_its_own_leaves_none_behind(tmp_path):
    executor = _executor(tmp_path)
    home = executor._cgroups.home
    if home is None:
        await executor.close()
        pytest.skip("no cgroup v2 with cgroup.kill that this process may write")
    pid_file = tmp_path / "child.pid"
    content = MANAGER.format(home=home, home_path=_own_cgroup_path().rstrip("/"),
                             pid_file=str(pid_file)).encode()
    child = None
    cgroup = None
    try:
        await executor._request("start", {
            "job": "job-1", "attempt": 1, "process": 0, "flow": "flow", "filename": "manager.py",
            **file_fields(content), "digest": hashlib.sha256(content).hexdigest(), "cores": 1})
        entry = executor.processes["job-1", 1, 0]
        cgroup = entry.cgroup
        assert cgroup is not None
        child = await _completed(entry, pid_file)
        assert _gone(child), "the job's child, in a cgroup below the job's, runs on after the job"
    finally:
        await _closed(executor, child)
    left = [path for path in (os.path.join(cgroup, "worker"), cgroup) if os.path.isdir(path)]
    for path in left:
        os.rmdir(path)
    assert not left, f"left behind after the executor's close(): {left}"


def test_the_cgroups_of_a_killed_executor_are_removed_with_those_below_them():
    home = _cgroups_home()
    ended = _an_ended_pid()
    dead = os.path.join(home, f"kernel-job-{ended}-00c0ffee-1")
    below = os.path.join(dead, "worker", "deeper")
    try:
        os.makedirs(below)
        sleeper = subprocess.Popen(["true"], preexec_fn=lambda: join_in_child(below))
        sleeper.wait()  # (the cgroup below was used, and is empty)
        JobCgroups.here()
        assert not os.path.exists(dead), "an ended executor's empty job cgroup left, a cgroup below it"
    finally:
        for path in (below, os.path.dirname(below), dead):
            if os.path.isdir(path):
                os.rmdir(path)
