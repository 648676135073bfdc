"""A test's Python script run in a process of its own, with a time limit: a
run that hangs fails its test rather than the suite."""

import subprocess
import sys
import textwrap

import pytest

TIME_LIMIT = 40  # seconds; each run takes one or two


def run_script(tmp_path, code: str) -> subprocess.CompletedProcess:
    """`code` (dedented) run as tmp_path/case.py, in tmp_path."""
    script = tmp_path / "case.py"
    script.write_text(textwrap.dedent(code))
    try:
        return subprocess.run([sys.executable, str(script)], capture_output=True, timeout=TIME_LIMIT,
                              cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the run hung (no end within {TIME_LIMIT} s): {exc.stderr!r}")


def assert_said_exact(done: subprocess.CompletedProcess) -> None:
    """The script ended well and printed only `exact` (its check against a reference)."""
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["exact"], done.stdout.decode() + done.stderr.decode()
