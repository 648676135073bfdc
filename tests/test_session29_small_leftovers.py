"""Session 29: small robustness items left by earlier sessions.

1. A cluster run forks its links process (net/_links.py), which imported
   `encodings.idna` (and `stringprep`) after the fork, resolving or
   encoding a peer's host, with a name ("localhost") as with an address. A
   thread of the application importing it at the fork holds its import lock
   in the child too, where nothing releases it: the links hung (session 28
   fixed the same for the kernels).
2. A Slurm batch script (`sbatch -n 4 -c 2`, not `srun`) running kernel.run
   itself has the job's CPUs on the node, but SLURM_CPUS_PER_TASK (a job
   step's task's) was read there too: it said 2 CPUs and did not pin. Slurm
   sets SLURM_STEP_ID only in a job step (checked on a real Slurm in
   tests/system/test_slurm.py).
3. A blank address (`--listen " "`) said `'' is not host:port` (the value
   after trimming); `executor --host ""` fell back to the host name. Each
   now says the address given is empty or blank, with what was given,
   exit 2.
4. A pipeline file's encoding: `submit` refused a latin-1 file with its
   coding line (`not UTF-8 text`), which `kernel.run` runs, and accepted
   `# coding: bogus`, which `kernel.run` refuses (exit 2). Both follow
   Python's rules now, and the job runs the file's own bytes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "kernel"))
from _ports import free_ports
from _procs import without_stall_reports

sys.path.insert(0, str(Path(__file__).resolve().parent / "system"))
from _system import System

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# -- 1. the links process imports nothing after its fork ------------------------------------

MEMBER = textwrap.dedent("""\
    import multiprocessing, os, sys

    PARENT = os.getpid()

    def hook(event, args):  # "import": each module actually loaded, in the process loading it
        if event == "import" and os.getpid() != PARENT:
            name = multiprocessing.current_process().name
            os.write(1, f"{name} imports {args[0]}\\n".encode())

    sys.addaudithook(hook)
    from kernel import Dataflow, run

    index, peers = int(sys.argv[1]), sys.argv[2]
    flow = Dataflow("numbers")
    out = flow.from_iterable(range(100)).key_by(lambda n: n % 7).map(lambda kv: kv[1]).collect()
    run(flow, process_id=index, peers=peers, secret="session-29-secret-" * 2, cores=2)
    print("done", sorted(out.items))
    """)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_the_links_process_of_a_cluster_imports_nothing_after_the_fork(tmp_path, host):
    script = tmp_path / "member.py"
    script.write_text(MEMBER)
    peers = ",".join(f"{host}:{port}" for port in free_ports(2))
    members = [subprocess.Popen([sys.executable, str(script), str(i), peers], cwd=tmp_path, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
    outputs = []
    try:
        for member in members:
            outputs.append(member.communicate(timeout=40))
    finally:
        for member in members:
            if member.poll() is None:
                member.kill()
                member.wait()
    assert [m.returncode for m in members] == [0, 0], [err for _, err in outputs]
    # (a cluster's collect handles fill on process 0)
    got = [line for out, _ in outputs for line in out.splitlines()]
    assert sorted(got) == sorted(["done " + repr(sorted(range(100))), "done []"])


# -- 2. a Slurm batch script is not a task of a job step -------------------------------------------

def test_a_slurm_batch_scripts_cpus_are_the_nodes_and_a_steps_tasks_its_own():
    from kernel.execution._cores import pin_kernels, slurm_cpus

    # as a real Slurm sets them for `sbatch -n 2 -c 1` on a two-CPU node
    batch = {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "1", "SLURM_CPUS_ON_NODE": "2"}
    step = dict(batch, SLURM_STEP_ID="0")  # `srun` in it
    assert slurm_cpus(batch) == (2, "SLURM_CPUS_ON_NODE")
    assert slurm_cpus(step) == (1, "SLURM_CPUS_PER_TASK")
    fewer_on_node = dict(step, SLURM_CPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="8")
    assert slurm_cpus(fewer_on_node) == (4, "SLURM_CPUS_ON_NODE")
    assert slurm_cpus({"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "1"}) is None  # (batch: nothing read)
    if len(os.sched_getaffinity(0)) == 2 and not _quota_under(2):
        assert pin_kernels(dict(batch, KERNEL_PIN_CPUS="auto")) is True
        assert pin_kernels(dict(step, KERNEL_PIN_CPUS="auto")) is False


def _quota_under(n: int) -> bool:
    from kernel.execution._cores import cgroup_cpu_quota

    quota = cgroup_cpu_quota()
    return quota is not None and quota < n


# -- 3. an empty or blank address, said so -------------------------------------------------------

def cli(*args, module="kernel"):
    env = dict(ENV, KERNEL_SECRET="session-29")
    env.pop("KERNEL_COORDINATOR", None)
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=20, env=env)  # (an executor refused nothing: it dialled on)


def test_blank_addresses_and_an_empty_executor_host_are_refused_saying_so(tmp_path):
    pipeline = tmp_path / "tiny.py"
    pipeline.write_text("from kernel import Dataflow\nflow = Dataflow('tiny')\n"
                        "flow.from_iterable([1]).collect()\n")
    calls = {
        "--listen ' '": ("coordinator", "--listen", " ", "--data", tmp_path / "c1"),
        "--dashboard '  '": ("coordinator", "--listen", "127.0.0.1:1", "--dashboard", "  ",
                             "--data", tmp_path / "c2"),
        "--coordinator ' '": ("status", "--coordinator", " "),
        "--host ''": ("executor", "--cores", "1", "--coordinator", "127.0.0.1:1", "--host", "",
                      "--workdir", tmp_path / "e1"),
        "--host ' '": ("executor", "--cores", "1", "--coordinator", "127.0.0.1:1", "--host", " ",
                       "--workdir", tmp_path / "e2"),
        "run --dashboard ' '": ("run", pipeline, "--dashboard", " "),
        "run --coordinator ' '": ("run", pipeline, "--coordinator", " "),
    }
    with ThreadPoolExecutor(4) as pool:
        done = {what: pool.submit(cli, *args) for what, args in calls.items()}
        done = {what: future.result() for what, future in done.items()}
    blank = "the address given is blank ({!r}; HOST:PORT)"
    assert {what: (d.returncode, d.stderr) for what, d in done.items()} == {
        "--listen ' '": (2, "error: --listen: " + blank.format(" ") + "\n"),
        "--dashboard '  '": (2, "error: --dashboard: " + blank.format("  ") + "\n"),
        "--coordinator ' '": (2, "error: --coordinator: " + blank.format(" ") + "\n"),
        "--host ''": (2, "error: --host: the name given is empty "
                         "(NAME; leave --host out for the host name)\n"),
        "--host ' '": (2, "error: --host: the name given is blank (' '; NAME; leave --host out for the host "
                          "name)\n"),
        "run --dashboard ' '": (2, "error: --dashboard: " + blank.format(" ") + "\n"),
        "run --coordinator ' '": (2, "error: --coordinator: " + blank.format(" ") + "\n"),
    }


# -- 4. a pipeline file's encoding, read alike by submit and kernel.run -----------------------------

LATIN_1 = """\
# -*- coding: latin-1 -*-
from kernel import Dataflow

flow = Dataflow("accents")
flow.from_iterable(["caf\xe9", "na\xefve"]).map(lambda s: [s, len(s)]).to_files(OUT)
"""


def _written(directory: Path) -> list:
    import json

    return sorted(json.loads(line) for part in sorted(directory.glob("part-*.jsonl"))
                  for line in part.read_text().splitlines())


def test_a_latin_1_pipeline_with_its_coding_line_runs_under_submit_as_under_kernel_run(tmp_path):
    for how in ("run", "submit"):
        text = LATIN_1.replace("OUT", repr(str(tmp_path / f"{how}-out")))
        (tmp_path / f"{how}.py").write_bytes(text.encode("latin-1"))
    assert b"caf\xe9" in (tmp_path / "run.py").read_bytes()  # (not UTF-8)
    expected = [["caf\xe9", 4], ["na\xefve", 5]]
    ran = cli("run", tmp_path / "run.py")
    # (a loaded machine may preempt an activation past the stall threshold: its report is due)
    assert (ran.returncode, without_stall_reports(ran.stderr)) == (0, ""), ran.stderr
    assert _written(tmp_path / "run-out") == expected
    system = System(tmp_path)
    try:
        system.start_coordinator()
        system.start_executor(1)
        system.executors_up(1)
        done = system.cli("submit", tmp_path / "submit.py", "--wait", timeout=40)
        assert done.returncode == 0, done.stderr
    finally:
        system.close()
    assert _written(tmp_path / "submit-out") == expected


@pytest.mark.parametrize("head", [b"# coding: bogus\n", b"x = 'caf\xe9'  # no coding line\n"])
def test_a_bad_coding_line_or_bytes_are_said_alike_by_submit_and_kernel_run(tmp_path, head):
    pipeline = tmp_path / "bad.py"
    pipeline.write_bytes(head + b"from kernel import Dataflow\nflow = Dataflow('x')\n"
                         b"flow.from_iterable([1]).collect()\n")
    try:
        compile(pipeline.read_bytes(), "bad.py", "exec")
    except SyntaxError as exc:  # the reference: Python's own message
        expected = exc.msg
    calls = {"kernel.run": ("run", "bad.py"),
             "submit": ("submit", "bad.py", "--coordinator", "127.0.0.1:1")}
    with ThreadPoolExecutor(2) as pool:
        done = {what: pool.submit(subprocess.run, [sys.executable, "-m", "kernel", *args], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=30,
                                  env=dict(ENV, KERNEL_SECRET="session-29"))
                for what, args in calls.items()}
        done = {what: future.result() for what, future in done.items()}
    said = {what: (d.returncode, d.stdout, d.stderr) for what, d in done.items()}
    assert said["submit"] == said["kernel.run"], said
    assert said["kernel.run"][0] == 2 and said["kernel.run"][2].startswith("error: bad.py")
    assert expected in said["kernel.run"][2]
    if b"bogus" in head:  # (Python names no line: not `bad.py:0:`, `line 0`)
        assert said["kernel.run"][2] == "error: bad.py: SyntaxError: unknown encoding: bogus\n"
