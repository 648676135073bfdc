"""Session 43: an executor removes, as it starts, the empty job cgroups of
executors that ended here without their close() (SIGKILL), each named for
the executor that made it. Named for its pid alone, an executor started
with the dead one's pid (pid 1, or a low one, of a container started
again) took them for its own and never removed them. They are named for
the executor's pid and its start time now (`/proc/PID/stat`), which tells
it from an earlier holder of its pid.

The dead executor's cgroups made by hand, with this process's pid (the pid
given again) and another start."""

from __future__ import annotations

import os

from kernel.system._job_cgroup import JobCgroups, started
from tests.system.test_session42_job_cgroup import _cgroups_home


def test_the_cgroups_of_a_dead_executor_whose_pid_this_one_has_are_removed():
    home = _cgroups_home()
    pid, start = os.getpid(), started(os.getpid())
    dead = os.path.join(home, f"kernel-job-{pid}-{start - 1}-00c0ffee-1")  # (an earlier holder of our pid)
    dead_before = os.path.join(home, f"kernel-job-{pid}-00c0ffee-2")  # (named by an executor of before)
    alive = os.path.join(home, f"kernel-job-{pid}-{start}-00c0ffee-3")  # (an executor of this process's)
    made = [dead, dead_before, alive]
    try:
        for path in made:
            os.mkdir(path)
        JobCgroups.here()
        assert [os.path.exists(path) for path in made] == [False, False, True]
    finally:
        for path in made:
            if os.path.exists(path):
                os.rmdir(path)


def test_a_job_cgroup_is_named_for_its_executors_pid_and_start():
    _cgroups_home()
    cgroups = JobCgroups.here()
    made = cgroups.made()
    try:
        name = os.path.basename(made)
        assert name.startswith(f"kernel-job-{os.getpid()}-{started(os.getpid())}-"), name
    finally:
        cgroups.discard(made)
