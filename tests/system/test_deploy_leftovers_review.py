"""Deployment leftovers: two Slurm jobs on one node and their ports
(SLURM_STEP_RESV_PORTS, and what a taken port says), and which CPUs the
kernels are pinned to where the machine's CPUs are shared (a Kubernetes
pod, a CPU quota, a Slurm job given fewer CPUs than the node has). Real
Slurm (one node, `MpiParams=ports=` so that Slurm reserves each step's
ports), real cgroups where this machine lets us make one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from pathlib import Path

import pytest
from _system import free_port_base, wait_until
from test_slurm import running_slurm

from kernel.cli._resource_managers import ResourceManagerError, from_slurm

ALLOWED = sorted(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def slurm_with_ports(tmp_path_factory):
    """A one-node Slurm that reserves ports for every job step, as a site
    with `MpiParams=ports=12000-12999` does (a free range here)."""
    base = free_port_base(200)
    with running_slurm(tmp_path_factory.mktemp("slurm"), f"MpiParams=ports={base}-{base + 199}\n") as env:
        yield dict(env, KERNEL_SECRET="leftovers")


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "KUBERNETES_", "KERNEL_PIN"))}
    return dict(env, KERNEL_SECRET="leftovers", **extra)


# -- Slurm: the step's reserved ports ----------------------------------------------------------------


def test_the_reserved_ports_of_the_step_are_the_tasks_ports():
    """SLURM_STEP_RESV_PORTS (the same on every node of the step; Slurm
    writes a range list) gives the task with local index l the l-th port;
    a `--port-base` given by hand still wins; too few ports say how to ask
    for more."""
    env = {"SLURM_NTASKS": "5", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_STEP_TASKS_PER_NODE": "3,2",
           "SLURM_STEP_RESV_PORTS": "12000,12002-12003"}
    reserved = "n1:12000,n1:12002,n1:12003,n2:12000,n2:12002"
    by_hand = "n1:7100,n1:7101,n1:7102,n2:7100,n2:7101"
    for procid in range(5):
        assert from_slurm(dict(env, SLURM_PROCID=str(procid))) == (procid, reserved)
        assert from_slurm(dict(env, SLURM_PROCID=str(procid)), port_base=7100) == (procid, by_hand)
    with pytest.raises(ResourceManagerError, match=r"SLURM_STEP_RESV_PORTS=12000-12001 reserves 2 ports for "
                                                   r"3 tasks on a node.*--resv-ports=3"):
        from_slurm(dict(env, SLURM_PROCID="0", SLURM_STEP_RESV_PORTS="12000-12001"))
    with pytest.raises(ResourceManagerError, match="malformed SLURM_STEP_RESV_PORTS"):
        from_slurm(dict(env, SLURM_PROCID="0", SLURM_STEP_RESV_PORTS="12000-x"))
    with pytest.raises(ResourceManagerError, match=r"=12000 reserves 1 port for 3 tasks"):
        from_slurm(dict(env, SLURM_PROCID="0", SLURM_STEP_RESV_PORTS="12000"))


def test_a_port_holder_started_with_a_multi_line_script_is_named_on_one_line():
    """The taken port's holder is named by its command line: a `python -c`
    script's newlines broke the error's line in several."""
    import subprocess
    import sys

    from kernel.cli._resource_managers import port_holder

    script = "import socket, sys\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\n" \
             "print(s.getsockname()[1], flush=True)\nsys.stdin.read()\n"
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        port = int(holder.stdout.readline())
        named = port_holder(port)
        assert named is not None and named.startswith(f"process {holder.pid} (`"), named
        assert "\n" not in named and "import socket, sys s = socket.socket()" in named, named
    finally:
        holder.kill()
        holder.wait()


def _job_pipeline(path: Path, out: Path, sync: Path, wait_for: str) -> None:
    """Two kernels (one a task) that say they started (a file each, by job)
    and wait until `wait_for` (an expression over `started`, the files'
    names, and `sync`) holds: its jobs then run at once."""
    path.write_text(textwrap.dedent(f"""\
        import os, time
        from pathlib import Path
        from kernel import Dataflow

        sync = Path({str(sync)!r})
        job = os.environ["SLURM_JOB_ID"]

        def share(index, peers):
            (sync / f"started-{{job}}-{{index}}").touch()
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                started = [p.name for p in sync.glob("started-*")]
                if {wait_for}:
                    break
                time.sleep(0.05)
            return range(index * 1000, (index + 1) * 1000)

        flow = Dataflow("mod7")
        flow.from_partitions(share).key_by(lambda n: n % 7).count().to_files(f"{out}/{{job}}")
        """))


def _srun(env, pipeline: Path, *args: str) -> subprocess.Popen:
    # -O: each job is given one of the node's two CPUs, so two run at once
    return subprocess.Popen(["srun", "-O", "-n", "2", sys.executable, "-m", "kernel", "run", str(pipeline),
                             "--slurm", "--startup-timeout", "5", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=pipeline.parent)


def _finish(procs) -> list[tuple[int, str]]:
    try:
        return [(proc.wait(timeout=60), proc.communicate()[1]) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _results(out: Path) -> dict[str, list]:
    return {d.name: sorted(tuple(json.loads(line)) for f in d.glob("part-*.jsonl")
                           for line in f.read_text().splitlines()) for d in out.iterdir()}


def test_two_jobs_on_one_node_run_at_once_on_their_reserved_ports(slurm_with_ports, tmp_path):
    """Without --port-base, both jobs' tasks listened on 7000 and 7001: the
    second job failed ("address already in use"). Each step's reserved
    ports keep them apart; both jobs' kernels run at the same time."""
    out, sync = tmp_path / "out", tmp_path / "sync"
    sync.mkdir()
    _job_pipeline(tmp_path / "p.py", out, sync, "len(started) >= 4")
    outcomes = _finish([_srun(slurm_with_ports, tmp_path / "p.py") for _ in range(2)])
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    expected = sorted(Counter(n % 7 for n in range(2000)).items())
    results = _results(out)
    assert len(results) == 2 and all(got == expected for got in results.values()), results


def test_a_taken_port_names_the_job_holding_it_and_what_to_do(slurm_with_ports, tmp_path):
    """Two jobs given one --port-base: the second is told which port, which
    job holds it, and the two ways out (--port-base, --resv-ports); it
    said only "cannot listen on vm:P: ... address already in use"."""
    out, sync = tmp_path / "out", tmp_path / "sync"
    sync.mkdir()
    _job_pipeline(tmp_path / "p.py", out, sync, "(sync / 'release').exists()")
    base = str(free_port_base(2))
    first = _srun(slurm_with_ports, tmp_path / "p.py", "--port-base", base)
    try:
        started = wait_until(lambda: sorted(sync.glob("started-*")) if len(list(sync.glob("started-*"))) == 2
                             else None, what="the first job's kernels", timeout=30)
        job = started[0].name.split("-")[1]
        (code, error), = _finish([_srun(slurm_with_ports, tmp_path / "p.py", "--port-base", base)])
    finally:
        (sync / "release").touch()
        (first_code, first_error), = _finish([first])
    assert first_code == 0, first_error
    assert code != 0
    assert f"port {base} " in error and f"Slurm job {job}" in error, error
    assert "--port-base" in error and "--resv-ports" in error, error


# -- CPUs: pinned only where they are this process's own ----------------------------------------------


def _affinity_pipeline(path: Path, out: Path) -> None:
    path.write_text(textwrap.dedent(f"""\
        import os
        from kernel import Dataflow

        flow = Dataflow("cpus")
        cpus = flow.from_partitions(lambda index, n: [(index, sorted(os.sched_getaffinity(0)))])
        cpus.to_files({str(out)!r})
        """))


def _kernel_cpus(out: Path) -> list[list[int]]:
    """The CPUs each kernel may run on, in kernel order."""
    rows = sorted(tuple(json.loads(line)) for f in out.glob("part-*.jsonl")
                  for line in f.read_text().splitlines())
    return [cpus for _, cpus in rows]


needs_two_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs to tell pinned from not")


@needs_two_cpus
@pytest.mark.parametrize("env, pinned", [
    ({}, True),  # this machine, as it is: its CPUs are ours
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, False),  # a pod with every CPU of the node: shared
    ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KERNEL_PIN_CPUS": "1"}, True),  # told to pin all the same
    ({"KERNEL_PIN_CPUS": "0"}, False),  # told not to
])
def test_kernels_are_pinned_only_to_cpus_that_are_their_own(tmp_path, env, pinned):
    """Two pods on one node each pinned kernel 0 to CPU 0 and kernel 1 to
    CPU 1: they competed for two CPUs while the others sat idle."""
    _affinity_pipeline(tmp_path / "p.py", tmp_path / "out")
    done = subprocess.run([sys.executable, "-m", "kernel", "run", str(tmp_path / "p.py"), "--cores", "2"],
                          capture_output=True, text=True, timeout=60, env=_clean_env(**env))
    assert done.returncode == 0, done.stderr
    cpus = _kernel_cpus(tmp_path / "out")
    if pinned:  # one CPU each, two different ones
        assert all(len(c) == 1 for c in cpus) and len({c[0] for c in cpus}) == 2, cpus
    else:
        assert cpus == [ALLOWED, ALLOWED]


@needs_two_cpus
def test_a_slurm_job_given_fewer_cpus_than_the_node_has_is_not_pinned(slurm_with_ports, tmp_path):
    """`srun -n 1` is given one CPU of two (SLURM_CPUS_ON_NODE=1), and with
    task/none its affinity is the whole node: pinning put every such job's
    kernel 0 on CPU 0 (and kernel 1 on CPU 1), whatever the others ran."""
    _affinity_pipeline(tmp_path / "p.py", tmp_path / "out")
    done = subprocess.run(["srun", "-n", "1", sys.executable, "-m", "kernel", "run", str(tmp_path / "p.py"),
                           "--cores", "2"],
                          capture_output=True, text=True, timeout=60, env=slurm_with_ports, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _kernel_cpus(tmp_path / "out") == [ALLOWED, ALLOWED]


def _cpu_cgroup() -> tuple[Path, str, str] | None:
    """A new cgroup of the cpu controller: (its dir, quota file, what to
    write for one CPU's time), or None where we may not make one."""
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        return v1 / f"leftovers-{uuid.uuid4().hex[:8]}", "cpu.cfs_quota_us", "100000"
    v2 = Path("/sys/fs/cgroup")
    control = v2 / "cgroup.subtree_control"
    if control.exists() and "cpu" in control.read_text().split():
        return v2 / f"leftovers-{uuid.uuid4().hex[:8]}", "cpu.max", "100000 100000"
    return None


@needs_two_cpus
def test_a_cpu_quota_below_the_cpus_allowed_leaves_the_kernels_unpinned(tmp_path):
    """A container limited to one CPU's time (a pod's `limits: cpu: 1`, the
    cgroup's CPU quota) may run on every CPU of the node, shared with the
    other containers: its kernels are left to Linux's scheduler."""
    found = _cpu_cgroup()
    if found is None:
        pytest.skip("no cgroup cpu controller to use here")
    group, quota_file, one_cpu = found
    try:
        group.mkdir()
        (group / quota_file).write_text(one_cpu)
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup here: {exc}")
    try:
        _affinity_pipeline(tmp_path / "p.py", tmp_path / "out")
        done = subprocess.run(
            [sys.executable, "-m", "kernel", "run", str(tmp_path / "p.py"), "--cores", "2"],
            capture_output=True, text=True, timeout=60, env=_clean_env(),
            preexec_fn=lambda: (group / "cgroup.procs").write_text(str(os.getpid())))
        assert done.returncode == 0, done.stderr
        assert _kernel_cpus(tmp_path / "out") == [ALLOWED, ALLOWED]
    finally:
        group.rmdir()
