"""Pinning in a Kubernetes node's shared CPU pool, and the "more kernels
than CPUs" warning under a CPU quota: real processes in a real cgroup of
the cpu controller (its quota written), with their affinity restricted as
the kubelet's static CPU manager restricts a pod's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from _procs import without_stall_reports

ALLOWED = sorted(os.sched_getaffinity(0))
needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2 or (os.cpu_count() or 0) < 2,
                                    reason="needs two CPUs: a pool smaller than the node")


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "KUBERNETES_", "KERNEL_PIN"))}
    env.update(extra)
    return env


@pytest.fixture
def cpu_cgroup():
    """Makes a cgroup of the cpu controller with a quota of `cpus` CPUs'
    time (None: no quota); returns a preexec_fn that moves a child into it."""
    made = []

    def make(cpus: float | None):
        v1 = Path("/sys/fs/cgroup/cpu")
        v2 = Path("/sys/fs/cgroup")
        name = f"pinning-{uuid.uuid4().hex[:8]}"
        if (v1 / "cpu.cfs_quota_us").exists():
            group, quota_file = v1 / name, "cpu.cfs_quota_us"
            quota = "-1" if cpus is None else str(round(cpus * 100000))
        elif (v2 / "cgroup.subtree_control").exists() and \
                "cpu" in (v2 / "cgroup.subtree_control").read_text().split():
            group, quota_file = v2 / name, "cpu.max"
            quota = "max 100000" if cpus is None else f"{round(cpus * 100000)} 100000"
        else:
            pytest.skip("no cgroup cpu controller to use here")
        try:
            group.mkdir()
            made.append(group)
            (group / quota_file).write_text(quota)
        except OSError as exc:
            pytest.skip(f"cannot make a cgroup here: {exc}")
        return lambda: (group / "cgroup.procs").write_text(str(os.getpid()))

    yield make
    for group in made:
        group.rmdir()


def _kernel_cpus_in(preexec, affinity, env) -> list:
    """What `_kernel_cpus(2)` says in a process in that cgroup with that affinity."""
    def start():
        preexec()
        os.sched_setaffinity(0, affinity)

    done = subprocess.run(
        [sys.executable, "-c", "from kernel.execution._cores import _kernel_cpus; print(_kernel_cpus(2))"],
        capture_output=True, text=True, timeout=30, env=env, preexec_fn=start)
    assert done.returncode == 0, done.stderr
    return eval(done.stdout)


POD = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}


@needs_two_cpus
@pytest.mark.parametrize("quota, env, pinned", [
    # a Burstable/BestEffort pod in the shared pool (every CPU but the Guaranteed pods'), no CPU limit:
    # two such pods on the node both put kernel 0 on the pool's first CPU
    (None, POD, False),
    # a limit above the pool's CPUs: still the shared pool
    (2, POD, False),
    # a Guaranteed pod with one whole CPU under the static policy: its CPU is its own
    (1, POD, True),
    (1.004, POD, True),  # (a quota that rounds to its CPUs)
    (None, {**POD, "KERNEL_PIN_CPUS": "1"}, True),  # told to pin all the same
    (None, {}, True),  # not a pod: a `taskset` CPU is the process's own, as before
])
def test_a_pod_is_pinned_only_where_its_cpus_are_its_own(cpu_cgroup, quota, env, pinned):
    cpu = ALLOWED[0]
    cpus = _kernel_cpus_in(cpu_cgroup(quota), {cpu}, _clean_env(**env))
    assert cpus == ([cpu, cpu] if pinned else [None, None])


PIPELINE = """\
from kernel import Dataflow

flow = Dataflow()
flow.from_iterable(range(5)).map(lambda x: f"sq {x * x}").print()
"""


def _run_two_cores(tmp_path, preexec) -> subprocess.CompletedProcess:
    path = tmp_path / "pipeline.py"
    path.write_text(textwrap.dedent(PIPELINE))
    done = subprocess.run([sys.executable, "-m", "kernel", "run", str(path), "--cores", "2"],
                          capture_output=True, text=True, timeout=60, env=_clean_env(), preexec_fn=preexec)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(f"sq {x * x}" for x in range(5))
    return done


@needs_two_cpus
def test_more_kernels_than_the_cpu_quota_run_with_a_warning_naming_the_quota(tmp_path, cpu_cgroup):
    """16 CPUs of affinity and a 2-CPU quota ran 8 kernels without a word:
    the warning counted the affinity only."""
    assert len(ALLOWED) >= 2
    done = _run_two_cores(tmp_path, cpu_cgroup(1))
    assert without_stall_reports(done.stderr).splitlines() == [
        "cores=2, but this process's CPU quota (its cgroup's) gives it only 1 CPU's time: the kernels "
        "will share CPUs, and run slower than with cores=1"]


@needs_two_cpus
def test_a_fractional_quota_counts_as_the_cpus_it_rounds_up_to(tmp_path, cpu_cgroup):
    # 1.5 CPUs' time: two kernels use it (one CPU each, part of the time) without a warning
    done = _run_two_cores(tmp_path, cpu_cgroup(1.5))
    assert without_stall_reports(done.stderr) == ""
