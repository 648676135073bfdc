"""A review of session 28's small leftovers.

1. `python -m kernel.run pipeline.py` (a relative path, as users type it)
   said a syntax error in the pipeline file as before the fix: "importing
   FILE raised SyntaxError: ...", exit 1. Python's SyntaxError names the
   file by its absolute path (importlib makes it so), and `load_flow`
   compared that with the path as given. So did a null byte in the file
   (a SyntaxError with no file name at all), whatever the path; and
   `submit` said it as `FILE:None: SyntaxError: ...` with a blank line.
2. A Slurm variable that `str.isdigit` takes but `int` does not ("²")
   crashed the run (ValueError from `int`) instead of being left unread.
3. `executor --dashboard-host ""` was taken, and every job it started
   failed (its processes' `--dashboard :PORT`: no host).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# -- 1. a pipeline file's syntax error, whatever its path's spelling -----------------------------

BROKEN = {
    "paren.py": b"from kernel import Dataflow\nflow = Dataflow('f')\nx = (\n",
    "indent.py": b"from kernel import Dataflow\nif True:\n  x = 1\n    y = 2\n",
    "tabs.py": b"if True:\n\tx = 1\n        y = 2\n",
    "latin.py": b"from kernel import Dataflow\nflow = Dataflow('f')\nx = '\xff\xfe'\n",
    "nul.py": b"from kernel import Dataflow\nx = 1\x00\n",
}


def python_says(name: str, data: bytes) -> str:
    """The reference: Python's own compile of the file's bytes (as import
    compiles them), said as `FILE:LINE: Type: message` and Python's lines
    (`FILE: Type: message` where Python names no line: a null byte)."""
    try:
        compile(data, name, "exec", dont_inherit=True)
    except SyntaxError as exc:
        if exc.lineno is None:
            return f"{name}: {type(exc).__name__}: {exc.msg}"
        where = "".join(traceback.format_exception_only(exc)[:-1]).rstrip()
        assert f'File "{name}", line {exc.lineno}' in where
        return f"{name}:{exc.lineno}: {type(exc).__name__}: {exc.msg}\n{where}"
    raise AssertionError(f"{name} compiles")


def cli(cwd, *args, module="kernel.run"):
    env = dict(os.environ, KERNEL_SECRET="leftovers-review",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=15, env=env)


def test_kernel_run_says_a_pipeline_files_syntax_error_given_by_a_relative_path(tmp_path):
    for name, data in BROKEN.items():
        (tmp_path / name).write_bytes(data)
    # a module the pipeline imports has the syntax error: not the file's own (its traceback, exit 1)
    (tmp_path / "helper.py").write_bytes(b"y = (\n")
    (tmp_path / "imports.py").write_text("import helper\n")
    calls = {name: (name,) for name in BROKEN}
    calls["paren.py:flow"] = ("paren.py:flow",)
    calls["./tabs.py --cores 2"] = ("./tabs.py", "--cores", "2")
    calls["json"] = ("paren.py", "--log-format", "json")
    calls["imports.py"] = ("imports.py",)
    with ThreadPoolExecutor(4) as pool:
        done = {what: pool.submit(cli, tmp_path, *args) for what, args in calls.items()}
        done = {what: future.result() for what, future in done.items()}
    said = {name: python_says(name, data) for name, data in BROKEN.items()}
    expected = {name: (2, f"error: {said[name]}\n") for name in BROKEN}
    expected["paren.py:flow"] = expected["paren.py"]
    expected["./tabs.py --cores 2"] = expected["tabs.py"]  # (named as pathlib spells it, as elsewhere)
    got = {what: (d.returncode, d.stderr) for what, d in done.items() if what in expected}
    assert got == expected
    (line,) = done["json"].stderr.splitlines()
    record = json.loads(line)
    assert (done["json"].returncode, record["level"], record["message"]) == (2, "ERROR", said["paren.py"])
    imported = done["imports.py"]
    assert imported.returncode == 1
    assert imported.stderr.startswith("error: importing imports.py raised SyntaxError: '(' was never closed")
    assert "Traceback" in imported.stderr and "import helper" in imported.stderr


def test_submit_says_a_null_byte_as_kernel_run_does(tmp_path):
    (tmp_path / "nul.py").write_bytes(BROKEN["nul.py"])
    submitted = cli(tmp_path, "submit", "nul.py", "--coordinator", "127.0.0.1:1", module="kernel")
    assert (submitted.returncode, submitted.stdout, submitted.stderr) == (
        2, "", f"error: {python_says('nul.py', BROKEN['nul.py'])}\n")


# -- 2. a Slurm variable int() cannot read --------------------------------------------------------

def test_slurm_variables_that_are_not_plain_numbers_are_left_unread():
    from kernel.execution._cores import pin_kernels, slurm_cpus

    job = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0"}  # (a job step's task: both are read)
    cases = {
        # SLURM_CPUS_PER_TASK, SLURM_CPUS_ON_NODE -> what is read
        ("²", "4"): (4, "SLURM_CPUS_ON_NODE"),
        ("2", "³"): (2, "SLURM_CPUS_PER_TASK"),
        ("2(x3)", "4"): (4, "SLURM_CPUS_ON_NODE"),
        ("", "0"): None,
        ("-1", "abc"): None,
        (" 3 ", "8"): (3, "SLURM_CPUS_PER_TASK"),
        ("٣", "8"): (8, "SLURM_CPUS_ON_NODE"),
    }
    got = {}
    for (per_task, on_node), _ in cases.items():
        env = dict(job, SLURM_CPUS_PER_TASK=per_task, SLURM_CPUS_ON_NODE=on_node)
        got[per_task, on_node] = slurm_cpus(env)
        pin_kernels(env)  # (no crash)
    assert got == cases


def test_a_run_in_a_slurm_job_with_an_unreadable_variable_runs(monkeypatch):
    from kernel import Dataflow, run

    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "²")
    monkeypatch.delenv("SLURM_CPUS_ON_NODE", raising=False)
    monkeypatch.delenv("KERNEL_PIN_CPUS", raising=False)
    flow = Dataflow()
    out = flow.from_iterable(range(10)).collect()
    run(flow, cores=2)
    assert sorted(out.items) == list(range(10))


# -- 3. an executor's empty --dashboard-host --------------------------------------------------------

def test_an_executors_empty_dashboard_host_is_said_to_be_empty(tmp_path):
    """Accepted, the executor ran on, and every job it started failed: its
    processes were given `--dashboard :PORT` (kernel.run: "no host", exit
    2). `--dashboard " "` is argparse's abbreviation of --dashboard-host."""
    calls = {
        "--dashboard-host": ("--dashboard-host", ""),
        "--dashboard": ("--dashboard", " "),
    }

    def executor(flags):
        return cli(tmp_path, "executor", "--cores", "1", "--coordinator", "127.0.0.1:1",
                   "--workdir", tmp_path / "w", *flags, module="kernel")

    with ThreadPoolExecutor(len(calls)) as pool:
        done = {what: pool.submit(executor, flags) for what, flags in calls.items()}
        done = {what: future.result() for what, future in done.items()}
    assert {what: (d.returncode, d.stderr) for what, d in done.items()} == {
        "--dashboard-host": (2, "error: --dashboard-host: the address given is empty "
                                "(HOST; --no-dashboard for no dashboard)\n"),
        "--dashboard": (2, "error: --dashboard-host: the address given is blank "
                           "(' '; HOST; --no-dashboard for no dashboard)\n"),
    }
