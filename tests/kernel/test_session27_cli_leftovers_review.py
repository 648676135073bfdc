"""Usability leftovers of the command lines (`python -m kernel.run`,
`python -m kernel submit/status`), run as a user would, in subprocesses.
`submit`'s own usage errors come before it dials the coordinator: these
name one where nothing listens, so an error after dialling would be a
connection refused (exit 1), not the usage error (exit 2)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _procs import without_stall_reports

REPO = Path(__file__).resolve().parents[2]

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("tiny")
flow.from_iterable(range(3)).sink(id)
"""

# a syntax error on line 4 (the unclosed call: Python names the line it opens on)
BROKEN = """\
from kernel import Dataflow

flow = Dataflow("tiny")
flow.from_iterable(range(3).sink(id)
"""


def run_cli(*args, module="kernel.run", env=None):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=env)


@pytest.fixture(scope="module")
def nobody():
    """A coordinator address where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return dict(os.environ, KERNEL_SECRET="leftovers", KERNEL_COORDINATOR=f"127.0.0.1:{port}")


def write(tmp_path, name, source):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_epoch_interval_without_a_state_dir_is_a_usage_error(tmp_path, nobody):
    # (epochs without a state_dir drive nothing: the snapshots are what
    # they are for, and a published topic cuts its own epochs then)
    pipeline = write(tmp_path, "tiny.py", PIPELINE)
    cases = [
        (["--epoch-interval", "0.5"], "kernel.run"),
        (["--epoch-interval", "0.5", "--cores", "2"], "kernel.run"),
        (["--epoch-interval", "0.5", "--log-format", "json"], "kernel.run"),
    ]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda case: run_cli(pipeline, *case[0], module=case[1]), cases))
        submitted = pool.submit(run_cli, "submit", pipeline, "--epoch-interval", "0.5", module="kernel",
                                env=nobody).result()
    for (args, _), done in zip(cases, runs):
        assert done.returncode == 2, (args, done.stderr)
        if "json" in args:
            (line,) = done.stderr.splitlines()
            assert json.loads(line)["message"] == "--epoch-interval needs --state-dir"
        else:
            assert done.stderr == "error: --epoch-interval needs --state-dir\n"
    assert (submitted.returncode, submitted.stderr) == (2, "error: --epoch-interval needs --state-dir\n")
    assert submitted.stdout == ""


def test_epoch_interval_with_a_state_dir_still_runs(tmp_path):
    pipeline = write(tmp_path, "tiny.py", PIPELINE)
    done = run_cli(pipeline, "--epoch-interval", "0.5", "--state-dir", tmp_path / "state")
    # (a loaded machine may preempt an activation past the stall threshold: its report is due)
    assert (done.returncode, without_stall_reports(done.stderr)) == (0, ""), done.stderr


def test_submit_refuses_a_file_with_a_syntax_error_before_sending_it(tmp_path, nobody):
    pipeline = write(tmp_path, "broken.py", BROKEN)
    try:
        compile(pipeline.read_text(), str(pipeline), "exec")
    except SyntaxError as exc:  # the reference: Python's own words for it
        expected = exc
    done = run_cli("submit", f"{pipeline}:flow", module="kernel", env=nobody)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    first = done.stderr.splitlines()[0]
    assert first == f"error: {pipeline}:{expected.lineno}: SyntaxError: {expected.msg}", done.stderr
    assert "flow.from_iterable(range(3).sink(id)" in done.stderr


def test_submit_does_not_execute_the_file_it_checks(tmp_path, nobody):
    # only its syntax: a pipeline that needs the executor's environment to
    # import is sent as before (here: dialled, and refused, exit 1)
    marker = tmp_path / "imported"
    pipeline = write(tmp_path, "needs_env.py", f"""\
        import pathlib
        pathlib.Path({str(marker)!r}).write_text("ran")
        import a_module_only_the_executor_has
        """)
    done = run_cli("submit", pipeline, module="kernel", env=nobody)
    assert done.returncode == 1, done.stderr
    assert "SyntaxError" not in done.stderr and "a_module_only" not in done.stderr
    assert not marker.exists()


def test_json_final_error_carries_the_pipelines_name_as_the_readme_says(tmp_path):
    pipeline = write(tmp_path, "fails.py", """\
        from kernel import Dataflow

        def boom(x):
            raise ValueError("no")

        nightly = Dataflow("fails")
        nightly.from_iterable(range(3)).map(boom).sink(id)
        """)
    for args, code in (([f"{pipeline}:nightly"], 1), ([f"{pipeline}:missing"], 2),
                       ([f"{pipeline}:nightly", "--cores", "0"], 2)):
        done = run_cli(*args, "--log-format", "json")
        assert done.returncode == code, done.stderr
        last = json.loads(done.stderr.splitlines()[-1])
        assert (last["level"], last["logger"], last["job"]) == ("ERROR", "kernel.run", "fails.py:" +
                                                                args[0].rpartition(":")[2]), last


def test_an_empty_coordinator_address_is_said_to_be_empty(tmp_path):
    pipeline = write(tmp_path, "tiny.py", PIPELINE)
    env = dict(os.environ, KERNEL_SECRET="leftovers", KERNEL_COORDINATOR="127.0.0.1:1")
    with ThreadPoolExecutor(2) as pool:
        status = pool.submit(run_cli, "status", "--coordinator", "", module="kernel", env=env)
        run = pool.submit(run_cli, pipeline, "--coordinator", "")
        status, run = status.result(), run.result()
    empty = "error: --coordinator: the address given is empty (HOST:PORT)\n"
    assert (status.returncode, status.stderr) == (2, empty)
    assert (run.returncode, run.stderr) == (2, empty)
    # not given at all: still what to set
    unset = {k: v for k, v in env.items() if k != "KERNEL_COORDINATOR"}
    done = run_cli("status", module="kernel", env=unset)
    assert done.returncode == 2 and "no coordinator given: set KERNEL_COORDINATOR or use --coordinator" \
        in done.stderr
