"""`srun -n M python -m kernel run pipeline.py --slurm`: a real one-node
Slurm (Debian's slurm-wlm and munge: munged, slurmctld and slurmd with a
generated slurm.conf in a temporary directory) runs a 2-task job whose
results are exact; the environment parsing (hostlists, tasks per node) is
checked against Slurm's own documented examples."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
from _system import free_port, free_port_base, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel.cli._resource_managers import (
    ResourceManagerError,
    expand_hostlist,
    from_slurm,
    tasks_per_node,
)

CONF = """\
ClusterName=streamkernel
SlurmctldHost={host}(127.0.0.1)
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm of our own; its SLURM_CONF environment. (MinJobAge=0:
    no job record is purged, and `sbatch --wait`, which polls at 2 s, then
    8 s later, then 32 s later while MinJobAge/2 is above its interval,
    polls every 2 s: a batch job that took a little over 2 s on a loaded
    machine held it 10 s.)"""
    with running_slurm(tmp_path_factory.mktemp("slurm"), "MinJobAge=0\n") as env:
        yield env


@contextlib.contextmanager
def running_slurm(d, extra_conf: str = ""):
    """munged, slurmctld and slurmd of a one-node Slurm in directory `d`,
    with `extra_conf` lines added to slurm.conf (MpiParams=ports=...);
    gives the SLURM_CONF environment."""
    for program in ("munged", "slurmctld", "slurmd", "srun"):
        assert shutil.which(program), f"{program} is missing: apt-get install slurm-wlm munge (.ci/run does)"
    (d / "state").mkdir()
    (d / "spool").mkdir()
    (d / "munge.key").write_bytes(os.urandom(1024))
    (d / "munge.key").chmod(0o400)
    conf = d / "slurm.conf"
    conf.write_text(CONF.format(host=socket.gethostname(), d=d, ctld_port=free_port(), d_port=free_port())
                    + extra_conf)
    env = dict(os.environ, SLURM_CONF=str(conf))
    daemons = []
    try:
        log = open(d / "daemons.log", "ab")
        daemons.append(subprocess.Popen(
            ["munged", "-F", "-f", f"--key-file={d}/munge.key", f"--socket={d}/munge.sock",
             f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"],
            stdout=log, stderr=log))
        wait_until((d / "munge.sock").exists, what="munged's socket")
        for daemon in ("slurmctld", "slurmd"):
            daemons.append(subprocess.Popen([daemon, "-D", "-f", str(conf)], stdout=log, stderr=log, env=env))
        wait_until(lambda: subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True,
                                          env=env).stdout.strip() == "idle",
                   timeout=60, what="the Slurm node to be idle", every=0.2)
        yield env
    finally:
        for proc in reversed(daemons):
            proc.send_signal(signal.SIGTERM)
        for proc in reversed(daemons):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_srun_runs_a_two_task_job_with_exact_results(slurm, tmp_path):
    out = tmp_path / "out"
    pipeline = tmp_path / "mod7.py"
    pipeline.write_text(textwrap.dedent(f"""\
        from kernel import Dataflow

        flow = Dataflow("mod7")
        numbers = flow.from_iterable(range(30_000), batch_size=500)
        numbers.key_by(lambda n: n % 7).map_values(lambda n: n * n).sum().to_files({str(out)!r})
        """))
    done = subprocess.run(
        ["srun", "-n", "2", sys.executable, "-m", "kernel", "run", str(pipeline), "--slurm",
         "--port-base", str(free_port_base(2))], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env=dict(slurm, KERNEL_SECRET="slurm-test-secret"))
    assert done.returncode == 0, done.stderr
    expected = Counter()
    for n in range(30_000):
        expected[n % 7] += n * n
    files = sorted(out.glob("part-*.jsonl"))
    assert len(files) == 2  # one per task: both ran, as one cluster
    got = [tuple(json.loads(line)) for f in files for line in f.read_text().splitlines()]
    assert sorted(got) == sorted(expected.items())



def batch_job_ended(options: list[str], cwd, env) -> dict[str, str]:
    """`sbatch OPTIONS`'s job, once it has ended: its `scontrol show job`
    fields (JobState, ExitCode...). Asked every 0.1 s, not `sbatch --wait`,
    which polls every 2 s (the slurm fixture's MinJobAge=0 keeps the record):
    a job done in 1 s held it 2 s, one done in 2.1 s held it 4 s."""
    submitted = subprocess.run(["sbatch", "--parsable", *options], capture_output=True, text=True,
                               timeout=60, cwd=cwd, env=env)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]

    def ended() -> dict[str, str] | None:
        shown = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                               timeout=60, env=env).stdout
        fields = dict(field.split("=", 1) for field in shown.split() if "=" in field)
        return fields if fields.get("JobState") not in (None, "PENDING", "CONFIGURING", "RUNNING",
                                                        "COMPLETING") else None

    return wait_until(ended, timeout=60, what=f"batch job {job} to end", every=0.1)


def test_a_batch_script_running_kernel_run_itself_has_the_jobs_cpus_on_the_node(slurm, tmp_path):
    """`sbatch -n 2 -c 1` on the two-CPU node: its script (no job step:
    SLURM_CPUS_PER_TASK=1 is a step's task's) has both CPUs, so two
    kernels are not said to share one; `srun -n 1` in it has one."""
    pipeline = tmp_path / "two.py"
    pipeline.write_text("from kernel import Dataflow\n\nflow = Dataflow('two')\n"
                        "flow.from_iterable(range(10)).key_by(lambda n: n % 2).count()"
                        f".to_files({str(tmp_path / 'out')!r})\n")
    probe = "from kernel.execution._cores import slurm_cpus; print('CPUS', slurm_cpus())"
    script = tmp_path / "job.sh"
    script.write_text(f"#!/bin/sh\n{sys.executable} -m kernel run {pipeline} --cores 2 2>&1\n"
                      f"{sys.executable} -c \"{probe}\"\n"
                      f"srun -n 1 {sys.executable} -c \"{probe}\"\n")
    out = tmp_path / "job.out"
    ended = batch_job_ended(["-n", "2", "-c", "1", "-o", str(out), str(script)], tmp_path,
                            dict(slurm, PYTHONPATH=os.pathsep.join(sys.path)))
    assert (ended["JobState"], ended["ExitCode"]) == ("COMPLETED", "0:0"), \
        (ended, out.read_text() if out.exists() else "")
    lines = out.read_text().splitlines()
    assert [line for line in lines if "cores=2, but" in line] == []
    assert sorted(json.loads(line) for part in (tmp_path / "out").glob("part-*.jsonl")
                  for line in part.read_text().splitlines()) == [[0, 5], [1, 5]]
    assert [line for line in lines if line.startswith("CPUS")] == [
        "CPUS (2, 'SLURM_CPUS_ON_NODE')", "CPUS (1, 'SLURM_CPUS_PER_TASK')"]

def test_hostlists_expand_as_slurm_writes_them():
    assert expand_hostlist("node[1-3,5]") == ["node1", "node2", "node3", "node5"]
    assert expand_hostlist("gpu[08-10]x,login") == ["gpu08x", "gpu09x", "gpu10x", "login"]
    assert expand_hostlist("rack[1-2]-n[1-2]") == ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]
    assert expand_hostlist("vm") == ["vm"]
    assert tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    for bad in ("node[1-3", "node]1[", "node[a-b]"):
        with pytest.raises(ResourceManagerError):
            expand_hostlist(bad)


def test_slurm_tasks_get_their_place_in_block_order():
    env = {"SLURM_NTASKS": "5", "SLURM_STEP_NODELIST": "n[1-2],m7", "SLURM_STEP_TASKS_PER_NODE": "2(x2),1"}
    peers = "n1:7000,n1:7001,n2:7000,n2:7001,m7:7000"
    for procid in range(5):
        assert from_slurm(dict(env, SLURM_PROCID=str(procid))) == (procid, peers)
    cases = [({}, "SLURM_PROCID"), ({"SLURM_PROCID": "5"}, "not below"),
             ({"SLURM_PROCID": "0", "SLURM_STEP_TASKS_PER_NODE": "2"}, "do not match"),
             ({"SLURM_PROCID": "0", "SLURM_DISTRIBUTION": "plane=2"}, "plane=2 distribution is not"),
             ({"SLURM_PROCID": "0", "SLURM_STEP_NODELIST": "", "SLURM_JOB_ID": "7"},
              "SLURM_STEP_NODELIST is not set")]
    # cyclic: one task a node, round after round (tasks 0, 1, 2 first on n1, n2, m7)
    cyclic = "n1:7000,n2:7000,m7:7000,n1:7001,n2:7001"
    for procid in range(5):
        assert from_slurm(dict(env, SLURM_PROCID=str(procid), SLURM_DISTRIBUTION="cyclic:block")) == \
            (procid, cyclic)
    for extra, message in cases:
        with pytest.raises(ResourceManagerError, match=message):
            from_slurm({k: v for k, v in {**env, **extra}.items() if k != "SLURM_PROCID" or extra})


def test_the_cli_says_what_is_missing_outside_slurm(tmp_path):
    pipeline = tmp_path / "p.py"
    pipeline.write_text("from kernel import Dataflow\nflow = Dataflow()\nflow.from_iterable([1]).print()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    done = subprocess.run([sys.executable, "-m", "kernel", "run", str(pipeline), "--slurm"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "--slurm: no Slurm job step (run it under srun" in done.stderr
    both = subprocess.run([sys.executable, "-m", "kernel", "run", str(pipeline), "--slurm", "--peers", "a:1"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert both.returncode == 2 and "take the place of --process-id and --peers" in both.stderr


@given(st.lists(st.tuples(st.sampled_from(["node", "gpu", "rack-a", "x"]), st.integers(1, 3),
                          st.sets(st.integers(0, 120), min_size=1, max_size=12)), min_size=1, max_size=4))
# (timing is no part of the check: on a loaded machine, generating the
# examples took 1.4 s once, and the too_slow health check failed the test)
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hostlists_expand_to_what_they_abbreviate(groups):
    """Hostlists written from sets of numbered hosts (runs of consecutive
    numbers as ranges, zero-padded to a width) expand back to those hosts,
    in order: the reference is the plain list."""
    text, expected = [], []
    for prefix, width, numbers in groups:
        ordered = sorted(numbers)
        runs, start = [], ordered[0]
        for previous, n in zip(ordered, [*ordered[1:], None]):
            if n != previous + 1:
                first, last = f"{start:0{width}d}", f"{previous:0{width}d}"
                runs.append(first if start == previous else f"{first}-{last}")
                start = n
        text.append(f"{prefix}[{','.join(runs)}]")
        expected += [f"{prefix}{n:0{width}d}" for n in ordered]
    assert expand_hostlist(",".join(text)) == expected
