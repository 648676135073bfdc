"""Deployment review (Slurm and Kubernetes): each test asserts what a user
of `--slurm` / `--peers-from-env` / deploy/kubernetes is promised, and
fails on the code as it is because of the bug it names."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from _system import free_port_base
from test_kubernetes import pod_env, render
from test_slurm import slurm  # noqa: F401  (the one-node Slurm fixture)

from kernel.cli._resource_managers import ResourceManagerError, from_kubernetes, from_slurm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))
from _netns import Switch


def _brute_hosts(prefix: str, numbers, width: int) -> list[str]:
    return [f"{prefix}{n:0{width}d}" for n in numbers]


# -- Slurm: SLURM_DISTRIBUTION=cyclic that srun sets by itself ---------------------------------------


def test_srun_of_one_task_inside_an_allocation_runs(slurm, tmp_path):  # noqa: F811
    """Inside an allocation (salloc, sbatch) srun exports
    SLURM_DISTRIBUTION=cyclic whenever the step has no more tasks than
    nodes (one task, or one per node), although nobody asked for cyclic
    and the placement is the same as block's: the job must run."""
    pipeline = tmp_path / "p.py"
    pipeline.write_text("from kernel import Dataflow\nflow = Dataflow('one')\n"
                        "flow.from_iterable(range(50)).map(lambda x: x * 2).print()\n")
    name = f"review-{os.getpid()}"
    try:
        done = subprocess.run(
            ["salloc", "-n", "2", "-J", name, "srun", "-n", "1", sys.executable, "-m", "kernel", "run",
             str(pipeline), "--slurm", "--port-base", str(free_port_base(1))],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=dict(slurm, KERNEL_SECRET="s"))
    finally:
        subprocess.run(["scancel", "-n", name], env=slurm, capture_output=True, timeout=30)
    assert "only the block distribution" not in done.stderr
    assert done.returncode == 0, done.stderr
    assert sorted(int(line) for line in done.stdout.split()) == [x * 2 for x in range(50)]


def test_cyclic_with_one_task_per_node_is_the_block_placement():
    """`sbatch -N 4 --ntasks-per-node=1` + `srun ...`: srun says cyclic
    (tasks <= nodes); every node holds one task either way."""
    env = {"SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "node[01-03,7]", "SLURM_STEP_TASKS_PER_NODE": "1(x4)",
           "SLURM_DISTRIBUTION": "cyclic"}
    hosts = [*_brute_hosts("node", [1, 2, 3], 2), "node7"]
    expected = ",".join(f"{h}:7000" for h in hosts)
    for procid in range(4):
        assert from_slurm(dict(env, SLURM_PROCID=str(procid))) == (procid, expected)


# -- Slurm: a batch script that forgot srun ---------------------------------------------------------


def test_a_batch_script_without_srun_is_told_to_use_srun():
    """What `sbatch -n 2` gives its batch script (captured from the real
    Slurm): no step variables. `python -m kernel run p.py --slurm` there
    must say it needs srun, not become process 0 of 2 and wait out the
    start-up timeout for a process 1 that nothing starts ("process 1
    (vm:7001) did not connect within 30 s")."""
    batch = {"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "vm", "SLURM_NODELIST": "vm", "SLURM_NNODES": "1",
             "SLURM_NPROCS": "2", "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_TASKS_PER_NODE": "2", "SLURM_JOB_CPUS_PER_NODE": "2", "SLURM_GTIDS": "0"}
    with pytest.raises(ResourceManagerError, match="srun"):
        from_slurm(batch)


# -- Slurm: ports -----------------------------------------------------------------------------------


def test_the_highest_port_is_a_valid_port_base():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "n[1-2]",
           "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}
    assert from_slurm(env, port_base=65535) == (0, "n1:65535,n2:65535")
    two = dict(env, SLURM_NTASKS="2", SLURM_STEP_NODELIST="n1", SLURM_STEP_TASKS_PER_NODE="2")
    assert from_slurm(two, port_base=65534) == (0, "n1:65534,n1:65535")


# -- Slurm on two hosts whose own name resolves to loopback (Debian's 127.0.1.1) ---------------------


@pytest.fixture
def two_nodes():
    """Two network-namespace hosts n0 (10.231.0.1), n1 (10.231.0.2), each
    with the /etc/hosts Debian writes: its own name on 127.0.1.1, the
    other's on its address (`ip netns exec` mounts /etc/netns/NS/hosts)."""
    switch = Switch(2)
    dirs = [Path("/etc/netns") / ns for ns in switch.hosts]
    try:
        for i, d in enumerate(dirs):
            d.mkdir(parents=True)
            other = 1 - i
            (d / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 n{i}\n"
                                     f"{switch.addresses[other]} n{other}\n")
        switch.open()
        yield switch
    finally:
        switch.close()
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)


def test_slurm_tasks_on_two_nodes_link_when_a_node_name_is_127_0_1_1_locally(two_nodes, tmp_path):
    out = tmp_path / "out"
    pipeline = tmp_path / "mod7.py"
    pipeline.write_text(textwrap.dedent(f"""\
        from kernel import Dataflow

        flow = Dataflow("mod7")
        flow.from_iterable(range(2000), batch_size=100).key_by(lambda n: n % 7).count().to_files({str(out)!r})
        """))
    procs = []
    for i in range(2):
        env = dict(os.environ, KERNEL_SECRET="s", SLURM_PROCID=str(i), SLURM_NTASKS="2",
                   SLURM_STEP_NODELIST="n[0-1]", SLURM_STEP_TASKS_PER_NODE="1(x2)")
        procs.append(subprocess.Popen(
            [*two_nodes.exec_prefix(i), sys.executable, "-m", "kernel", "run", str(pipeline), "--slurm",
             "--startup-timeout", "5"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    try:
        errors = [proc.communicate(timeout=30)[1] for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert [proc.returncode for proc in procs] == [0, 0], errors
    got = [tuple(json.loads(line)) for f in sorted(out.glob("part-*.jsonl"))
           for line in f.read_text().splitlines()]
    assert sorted(got) == sorted(Counter(n % 7 for n in range(2000)).items())


# -- Kubernetes --------------------------------------------------------------------------------------


def _statefulset(**kwargs) -> dict:
    return next(item for item in render.manifests(**kwargs) if item["kind"] == "StatefulSet")


def test_the_pod_name_the_manifest_gives_wins_over_an_fqdn_hostname():
    """A pod with `setHostnameAsFQDN: true` (or any hostname that is not
    the pod's name) has HOSTNAME=NAME-i.SERVICE.NS.svc.cluster.local; the
    manifest hands the pod's name in POD_NAME (the downward API) "for
    clarity", but it is read only when HOSTNAME is empty."""
    statefulset = _statefulset(name="wc", replicas=3, namespace="jobs")
    peers = ",".join(f"wc-{i}.wc-peers.jobs.svc.cluster.local:7000" for i in range(3))
    for ordinal in range(3):
        env = pod_env(statefulset, ordinal, "jobs")
        env["HOSTNAME"] = f"wc-{ordinal}.wc-peers.jobs.svc.cluster.local"
        assert from_kubernetes(env) == (ordinal, peers)


def test_the_readme_one_liner_deploys_an_image_that_has_the_kernel(tmp_path):
    """`render.py --replicas 4 --pipeline pipeline.py | kubectl apply -f -`
    (the README) used the default image, python:3.11-slim: a bare CPython,
    without streamkernel, whose pods crash-looped (`No module named
    kernel`, shown here by this machine's bare Python running the
    container's command). The default is now the image the Dockerfile
    beside render.py builds from the checkout (no container daemon runs
    here to build it: the test holds the two to each other)."""
    statefulset = _statefulset(pipeline_name="p.py", pipeline_text="")
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    bare = shutil.which("python3", path="/usr/bin:/usr/local/bin")
    command = [bare, "-I", *container["command"][1:]]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=tmp_path,
                          env={"PATH": "/usr/bin:/bin"})
    assert "No module named kernel" in done.stderr, done.stderr  # (a bare Python cannot run it)
    assert not container["image"].startswith("python:"), container["image"]
    dockerfile = (Path(render.__file__).parent / "Dockerfile").read_text()
    assert f"docker build -t {container['image']} -f deploy/kubernetes/Dockerfile ." in dockerfile
    assert "COPY . /src" in dockerfile and "pip install --no-cache-dir /src" in dockerfile
