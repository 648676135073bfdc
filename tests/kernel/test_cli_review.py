"""Robustness review of `python -m kernel.run`: inputs and environments the
command mishandles (each test fails on the code as it stands)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_cli import ENDLESS  # (the same endless pipeline)

REPO = Path(__file__).resolve().parents[2]

SILENT = """\
from kernel import Dataflow

out = []
flow = Dataflow()
flow.from_iterable(range(5)).map(lambda x: x * 2).sink(out.append)
"""


def cli(*args, cwd=REPO, **popen):
    return subprocess.run([sys.executable, "-m", "kernel.run", *map(str, args)], cwd=cwd,
                          capture_output=popen.pop("capture_output", True), text=True, timeout=60, **popen)


def write(tmp_path, name, source):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def _closing(fd):
    def close():
        os.close(fd)
    return close


# -- closed standard streams ---------------------------------------------------------

@pytest.mark.parametrize(("fd", "extra"), [(0, ()), (2, ()), (1, ("--quiet",))])
def test_a_closed_standard_stream_does_not_abort_a_run_that_does_not_use_it(tmp_path, fd, extra):
    # `cmd <&-`, `cmd 2>&-`, `cmd --quiet >&-`: the flow runs to its end, then the
    # process dies of SIGABRT (rc 134 / -6) in uvloop: "uv__close: Assertion
    # `fd > STDERR_FILENO' failed" (the loop got the free fd 0/1/2 and closes it).
    path = write(tmp_path, "silent.py", SILENT)
    streams = {0: {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE},
               1: {"stdin": subprocess.DEVNULL, "stderr": subprocess.PIPE},
               2: {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE}}[fd]
    proc = subprocess.run([sys.executable, "-m", "kernel.run", str(path), *extra], cwd=REPO,
                          text=True, timeout=60, preexec_fn=_closing(fd), **streams)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)


def test_a_closed_stdout_is_not_a_traceback_from_the_progress_line(tmp_path):
    # `python -m kernel.run silent.py >&-`: sys.stdout is None and `_progress`
    # calls sys.stdout.isatty(): an AttributeError traceback, exit 1, for a
    # pipeline that never writes to stdout.
    path = write(tmp_path, "silent.py", SILENT)
    proc = subprocess.run([sys.executable, "-m", "kernel.run", str(path)], cwd=REPO, text=True,
                          timeout=60, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          preexec_fn=_closing(1))
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr


# -- a reader that goes away: `python -m kernel.run p.py | head -1` -------------------

LOUD = """\
import itertools
from kernel import Dataflow

flow = Dataflow()
flow.from_iterable(itertools.count(), batch_size=100).print()
"""


@pytest.mark.parametrize("cores", ["1", "2"])
def test_a_broken_pipe_ends_the_run_quietly(tmp_path, cores):
    # What happens: exit 1 and "error: operator 'print (step 1)': function
    # 'kernel.operators._sinks.Print.on_batch' raised BrokenPipeError" followed
    # by an empty "Traceback (..., library frames hidden):" (no frame).
    # What should: end quietly, as `yes | head -1` does (0, or 141 / SIGPIPE).
    path = write(tmp_path, "loud.py", LOUD)
    proc = subprocess.Popen([sys.executable, "-m", "kernel.run", str(path), "--cores", cores], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() != ""
        proc.stdout.close()  # `head -1` has what it wanted
        err = proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert "BrokenPipeError" not in err and "Traceback" not in err, err
    assert proc.returncode in (0, 141, -signal.SIGPIPE), (proc.returncode, err)


# -- "library frames hidden" shows library frames -------------------------------------

def test_an_import_error_traceback_hides_importlibs_frames(tmp_path):
    # The traceback said "library frames hidden" but began with
    # `File "<frozen importlib._bootstrap_external>", line 940, in exec_module`
    # and `File "<frozen importlib._bootstrap>", ... _call_with_frames_removed`.
    path = write(tmp_path, "broken.py",
                 'from kernel import Dataflow\nflow = Dataflow()\nraise RuntimeError("at import")\n')
    proc = cli(path)
    assert proc.returncode == 1
    assert f'File "{path}", line 3, in <module>' in proc.stderr
    assert "<frozen importlib" not in proc.stderr, proc.stderr


def test_a_user_function_traceback_hides_the_fused_chains_frames(tmp_path):
    # Two maps are fused: the traceback shows `File "<fused chain 0>", line 3, in plain`
    # and `File "<fused chain 0>", line 6, in <listcomp>` before the user's frame.
    path = write(tmp_path, "fused.py", """\
        from kernel import Dataflow


        def f(x):
            if x == 3:
                raise ValueError("bad three")
            return x


        flow = Dataflow()
        flow.from_iterable(range(10)).map(lambda x: x + 1).map(f).print()
        """)
    proc = cli(path)
    assert proc.returncode == 1
    assert f'File "{path}", line 6, in f' in proc.stderr
    assert "<fused chain" not in proc.stderr, proc.stderr


# -- sys.exit() at import: the answer depends on --cores ------------------------------

def test_sys_exit_at_import_is_the_same_on_one_and_on_two_cores(tmp_path):
    # --cores 1: exit 3, nothing said. --cores 2: exit 1, "error: kernel 0 failed:
    # SystemExit: 3" and a "Traceback (..., library frames hidden):" with no frame.
    path = write(tmp_path, "leaves.py", "import sys\nsys.exit(3)\n")
    one, two = cli(path), cli(path, "--cores", "2")
    assert (one.returncode, one.stderr) == (two.returncode, two.stderr)


# -- a pipeline that calls run() itself at import --------------------------------------

SELF_RUNNING = """\
from kernel import Dataflow, run

flow = Dataflow()
flow.from_iterable(["only-once"]).print()
run(flow)
"""


def test_a_pipeline_that_runs_its_flow_at_import_is_not_run_twice(tmp_path):
    # --cores 1: the flow runs at import, then again by the command: every
    # record is printed twice, exit 0, no word. It should run once, or be
    # refused with a clear message.
    proc = cli(write(tmp_path, "selfrun.py", SELF_RUNNING))
    assert proc.stdout.count("only-once") <= 1, proc.stdout
    if proc.stdout.count("only-once") == 0:
        assert proc.returncode != 0 and "run(" in proc.stderr


def test_a_pipeline_that_runs_its_flow_at_import_on_two_cores_says_what_is_wrong(tmp_path):
    # --cores 2: each kernel's import fails with "run() blocks and cannot be
    # called from a running event loop; use `await run_async(flow)` there":
    # the user has no event loop, and run_async is no answer.
    proc = cli(write(tmp_path, "selfrun.py", SELF_RUNNING), "--cores", "2")
    assert "running event loop" not in proc.stderr, proc.stderr
    assert "run_async" not in proc.stderr, proc.stderr


# -- usage errors ----------------------------------------------------------------------

def test_a_directory_is_not_said_to_be_missing(tmp_path):
    # `python -m kernel.run some/dir`: "error: pipeline file not found: some/dir",
    # which is there; it should say it is a directory.
    folder = tmp_path / "pipes"
    folder.mkdir()
    proc = cli(folder)
    assert proc.returncode == 2
    assert "directory" in proc.stderr.replace(str(folder), "PATH"), proc.stderr


def test_log_format_json_makes_a_bad_option_value_a_json_line_too(tmp_path):
    # `--log-format json --cores two`: argparse's usage text and
    # "python -m kernel.run: error: argument --cores: invalid int value: 'two'"
    # in plain text, while `--cores 0` is a JSON line.
    path = write(tmp_path, "silent.py", SILENT)
    proc = cli(path, "--log-format", "json", "--cores", "two")
    assert proc.returncode == 2
    for line in proc.stderr.splitlines():
        assert json.loads(line)["level"] == "ERROR"


# -- two runs on one --state-dir at once -----------------------------------------------

SHARED = """\
import sys

from kernel import Dataflow

seen = []


def announce(x):
    if not seen:
        seen.append(x)
        sys.stdout.write("running\\n")  # (one write: two kernels' lines never interleave)
        sys.stdout.flush()


flow = Dataflow("shared")
flow.from_iterable(range(10**12), batch_size=10).map(lambda x: x).sink(announce)
"""


def interrupt(*procs) -> None:
    """Ctrl-C (SIGINT) to each process given (None: none started), waited
    for; killed where that did not end it."""
    for proc in procs:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=20)
            finally:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("cores", ["1", "2"])
def test_a_second_run_on_a_state_dir_in_use_is_refused(tmp_path, cores):
    # A second `python -m kernel.run p.py --state-dir S` while the first still
    # runs (a retry, a double-started cron job) says "state_dir S: resuming from
    # epoch 2" -- an epoch of the live run -- and runs alongside it, both
    # snapshotting into one store. It should be refused (the directory is in use).
    path = write(tmp_path, "shared.py", SHARED)
    cmd = [sys.executable, "-m", "kernel.run", str(path), "--cores", cores,
           "--state-dir", str(tmp_path / "state"), "--epoch-interval", "0.05"]
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None
    try:
        assert first.stdout.readline() == "running\n"  # the first run has its state_dir open
        second = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # refused: its stdout ends with no record; running: it prints "running"
        line = second.stdout.readline()
    finally:
        interrupt(second, first)
    assert line == "", "a second run resumed from the state_dir of a run still running"
    assert second.returncode != 0


# -- an error with no user frame, and the pipeline module's internal name ------------------

def test_stdout_on_a_full_disk_is_one_clear_error_without_an_empty_traceback(tmp_path):
    # `python -m kernel.run p.py > /dev/full`: exit 1 (fine) and "error: operator
    # 'print (step 1)' ... raised OSError: [Errno 28] No space left on device",
    # then "Traceback (most recent call last, library frames hidden):" with no
    # frame under it (every frame is the library's).
    path = write(tmp_path, "loud.py", LOUD)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "kernel.run", str(path)], cwd=REPO, stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 1
    assert "No space left on device" in proc.stderr
    lines = proc.stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            assert i + 1 < len(lines) and lines[i + 1].startswith("  File "), proc.stderr


def test_an_exception_class_of_the_pipeline_is_not_named_after_the_internal_module(tmp_path):
    # The traceback's last line reads "__kernel_pipeline__.MyError: no" (the
    # name the command imports the file under), where `python pipeline.py`
    # says "__main__.MyError" and the error line itself says "MyError: no".
    path = write(tmp_path, "own.py", """\
        from kernel import Dataflow


        class MyError(Exception):
            pass


        def f(x):
            raise MyError("no")


        flow = Dataflow()
        flow.from_iterable([1]).map(f).print()
        """)
    proc = cli(path)
    assert proc.returncode == 1
    assert "MyError: no" in proc.stderr
    assert "__kernel_pipeline__" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_log_format_json_says_interrupted_as_a_json_line(tmp_path, stop, code):
    # With --log-format json every other last word of the command is a JSON
    # object; Ctrl-C and SIGTERM end it with a bare "interrupted" / "terminated"
    # line, which a log shipper that parses each line as JSON rejects.
    path = write(tmp_path, "endless.py", ENDLESS)
    proc = subprocess.Popen([sys.executable, "-m", "kernel.run", str(path), "--log-format", "json"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "started\n"
        proc.send_signal(stop)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == code
    for line in err.splitlines():
        json.loads(line)  # (a stall warning is a JSON line too)
