"""Small leftovers of session 28.

1. from_files' `skipped_count` after a resume on another number of kernels,
   from a snapshot where every kernel's share had been read to its end (the
   file source had ended everywhere, another source kept the run going).
2. The sdist carries what builds the wheel (the packages' files git
   tracks, pyproject.toml, README.md, setuptools' metadata), not setuptools'
   egg-info among the alias modules (made under aliases/, the package-dir
   of "": setup.cfg puts it at the top) nor the top-level half of tests/
   (setuptools' default test*.py).
3. The more-kernels-than-CPUs warning counts a Slurm job's CPUs on this
   node (SLURM_CPUS_PER_TASK, SLURM_CPUS_ON_NODE) with the affinity's and
   the cgroup quota's, and names the fewest.
4. `--listen ""` and `--dashboard ""` say the address given is empty, as
   `--coordinator ""` does (they said "no address given", or, kernel.run's
   --dashboard, "must be 'HOST:PORT' ..., got '': no port").
5. A pipeline file with a syntax error: `submit` and `python -m kernel.run`
   say it in the same words (FILE:LINE, Python's message, its line and
   caret), exit 2; kernel.run said "importing FILE raised SyntaxError: ..."
   (no caret), exit 1.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tarfile
import textwrap
import traceback
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kernel import Dataflow, run
from tests import _crash_runs

# -- 1. skipped_count after a resume on another number of kernels ---------------------------------

ENDED_PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    def slow(n):
        time.sleep(0.002)
        return n

    flow = Dataflow("skips")
    records = flow.from_files(os.path.join(os.environ["IN"], "*.jsonl"), format="jsonl", on_error="skip")
    records.map(lambda r: r["n"]).to_files(os.path.join(os.environ["OUT"], "r"))
    flow.from_iterable(range(4000), batch_size=1).map(slow).to_files(os.path.join(os.environ["OUT"], "s"))
    """
)


def ended_flow(directory):
    """The pipeline's flow (its slow map not slow), built here to read its skipped_count."""
    def slow(n):
        return n

    flow = Dataflow("skips")
    records = flow.from_files(str(directory / "in" / "*.jsonl"), format="jsonl", on_error="skip")
    records.map(lambda r: r["n"]).to_files(str(directory / "out" / "r"))
    flow.from_iterable(range(4000), batch_size=1).map(slow).to_files(str(directory / "out" / "s"))
    return flow, records


def write_bad_lines(directory) -> tuple[int, list[int]]:
    """Three files with a malformed line every 7th line: (how many malformed
    lines, the numbers of the good ones), counted here by brute force."""
    (directory / "in").mkdir()
    bad, good = 0, []
    for name in ("a", "b", "c"):
        lines = []
        for n in range(100):
            if n % 7 == 3:
                lines.append(b'{"n": oops}\n')
                bad += 1
            else:
                lines.append(b'{"n": %d}\n' % n)
                good.append(n)
        (directory / "in" / f"{name}.jsonl").write_bytes(b"".join(lines))
    return bad, good


@pytest.mark.parametrize("resumed_on", [1, 3])
def test_skipped_count_after_a_resume_on_another_number_of_kernels_whose_shares_had_ended(
        tmp_path, resumed_on):
    """Killed on 2 kernels at an epoch where the file source had ended on
    both (its parts: `Ended`, with each kernel's skipped count), resumed on
    1 or 3: the step was restored as ended with plain ENDED and the count
    was 0."""
    bad, good = write_bad_lines(tmp_path)
    assert bad == 3 * len([n for n in range(100) if n % 7 == 3]) and bad > 0
    (tmp_path / "pipeline.py").write_text(ENDED_PIPELINE)

    def file_source_ended_everywhere_and_run_going(snapshots):
        return (all(kernel.get(0) == "ended" for kernel in snapshots)
                and any(part != "ended" for kernel in snapshots for part in kernel.values()))

    _crash_runs.run_cli_until(tmp_path, 2, file_source_ended_everywhere_and_run_going,
                              IN=tmp_path / "in", OUT=tmp_path / "out")
    _crash_runs.wait_until_unlocked(tmp_path / "state")
    flow, records = ended_flow(tmp_path)
    run(flow, cores=resumed_on, state_dir=tmp_path / "state", epoch_interval=0.02)
    assert sorted(_crash_runs.visible_lines(tmp_path / "out" / "r")) == sorted(good)
    assert sorted(_crash_runs.visible_lines(tmp_path / "out" / "s")) == list(range(4000))
    assert records.skipped_count.value == bad


# -- 2. the sdist -----------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent

# (tests/_builds.py: one build of a source directory at a time)
from tests._builds import build  # noqa: E402


def test_the_sdist_carries_what_builds_the_wheel_and_nothing_else(tmp_path):
    sdist = build("sdist", ROOT, tmp_path / "sdist")
    with tarfile.open(sdist) as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()}
        tar.extractall(tmp_path / "unpacked", filter="data")
    tracked = subprocess.run(["git", "ls-files", "kernel", "net", "operators", "state", "aliases"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    assert len(tracked) > 100
    metadata = {name for name in names if name.startswith("streamkernel.egg-info/")}  # (setuptools' own)
    assert "streamkernel.egg-info/PKG-INFO" in metadata
    top = {"pyproject.toml", "README.md", "MANIFEST.in", "setup.cfg", "PKG-INFO"}
    assert names - metadata == {*tracked, *top}
    # and it builds the wheel the checkout builds
    unpacked, = (tmp_path / "unpacked").iterdir()
    from_sdist = build("wheel", unpacked, tmp_path / "wheel-from-sdist")
    from_checkout = build("wheel", ROOT, tmp_path / "wheel")
    with zipfile.ZipFile(from_sdist) as a, zipfile.ZipFile(from_checkout) as b:
        assert sorted(a.namelist()) == sorted(b.namelist())


# -- 3. more kernels than a Slurm job's CPUs ------------------------------------------------------

SHARING = "the kernels will share CPUs, and run slower than with cores=1"


def warnings_of_a_run(caplog, cores: int) -> list[str]:
    flow = Dataflow()
    out = flow.from_iterable(range(4)).collect()
    with caplog.at_level(logging.WARNING, logger="kernel"):
        run(flow, cores=cores)
    assert sorted(out.items) == [0, 1, 2, 3]
    return [r.getMessage() for r in caplog.records if r.name == "kernel" and "cores=" in r.getMessage()]


def test_more_kernels_than_a_slurm_jobs_cpus_on_the_node_is_said(caplog, monkeypatch):
    """Two kernels where this process may use two CPUs (this machine's
    affinity; no cgroup quota under 2) but its Slurm job has one on the node."""
    assert len(os.sched_getaffinity(0)) >= 2  # (the suite's machines have two CPUs at least)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "1")
    assert warnings_of_a_run(caplog, 2) == [
        "cores=2, but this process's Slurm job gives it only 1 CPU on this node (SLURM_CPUS_ON_NODE): "
        + SHARING]


def test_a_slurm_tasks_cpus_bound_it_where_fewer_than_the_nodes(caplog, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")  # (a job step's task: `srun`)
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "8")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert warnings_of_a_run(caplog, 2) == [
        "cores=2, but this process's Slurm job gives it only 1 CPU on this node (SLURM_CPUS_PER_TASK): "
        + SHARING]

    caplog.clear()
    monkeypatch.delenv("SLURM_JOB_ID")  # (not in a Slurm job: its variables are not read)
    assert warnings_of_a_run(caplog, 2) == []


# -- 4. an empty address, said alike by every flag -------------------------------------------------

def cli(*args, module="kernel"):
    env = dict(os.environ, KERNEL_SECRET="leftovers")
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env=env)


def test_an_empty_listen_or_dashboard_address_is_said_to_be_empty(tmp_path):
    pipeline = tmp_path / "tiny.py"
    pipeline.write_text("from kernel import Dataflow\nflow = Dataflow('tiny')\n"
                        "flow.from_iterable([1]).collect()\n")
    calls = {
        "--listen": (("coordinator", "--listen", "", "--data", tmp_path / "c1"), "kernel"),
        "--dashboard": (("coordinator", "--listen", "127.0.0.1:1", "--dashboard", "",
                         "--data", tmp_path / "c2"), "kernel"),
        "run --dashboard": ((pipeline, "--dashboard", ""), "kernel.run"),
    }
    with ThreadPoolExecutor(len(calls)) as pool:
        done = {what: pool.submit(cli, *args, module=module) for what, (args, module) in calls.items()}
        done = {what: future.result() for what, future in done.items()}
    assert {what: (d.returncode, d.stderr) for what, d in done.items()} == {
        "--listen": (2, "error: --listen: the address given is empty (HOST:PORT)\n"),
        "--dashboard": (2, "error: --dashboard: the address given is empty (HOST:PORT)\n"),
        "run --dashboard": (2, "error: --dashboard: the address given is empty (HOST:PORT)\n"),
    }


# -- 5. a pipeline file with a syntax error, said alike by submit and kernel.run -------------------

BROKEN = """\
from kernel import Dataflow

flow = Dataflow("tiny")
flow.from_iterable(range(3).map(str).collect(
x = 1
"""


def test_submit_and_kernel_run_say_a_syntax_error_alike(tmp_path):
    pipeline = tmp_path / "broken.py"
    pipeline.write_text(BROKEN)
    try:
        compile(BROKEN, str(pipeline), "exec")
    except SyntaxError as exc:  # the reference: Python's own words, line and caret
        expected = exc
    where = "".join(traceback.format_exception_only(expected)[:-1])
    assert "^" in where and str(pipeline) in where
    said = f"error: {pipeline}:{expected.lineno}: SyntaxError: {expected.msg}\n{where}"
    calls = {
        "submit": (("submit", f"{pipeline}:flow", "--coordinator", "127.0.0.1:1"), "kernel"),
        "kernel.run": ((pipeline,), "kernel.run"),
        "kernel.run --cores 2": ((pipeline, "--cores", "2"), "kernel.run"),
        "kernel run FILE:flow": (("run", f"{pipeline}:flow"), "kernel"),
    }
    with ThreadPoolExecutor(len(calls)) as pool:
        done = {what: pool.submit(cli, *args, module=module) for what, (args, module) in calls.items()}
        done = {what: future.result() for what, future in done.items()}
    assert {what: (d.returncode, d.stdout, d.stderr) for what, d in done.items()} == {
        what: (2, "", said) for what in calls}
