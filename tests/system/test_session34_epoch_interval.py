"""Session 34: `submit --epoch-interval` is checked before anything is sent,
as `kernel run` checks it (exit 2). `nan` and `inf` went as JSON's null:
the job was submitted, and ran at the default interval, without a word;
`0` and `-1` were the coordinator's refusal, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _system import free_port
from test_system import NOOP, write


@pytest.mark.parametrize("given", ["nan", "inf", "0", "-1"])
def test_submit_refuses_an_epoch_interval_kernel_run_refuses(tmp_path, given):
    pipeline = write(tmp_path / "noop.py", NOOP)
    env = dict(os.environ, KERNEL_SECRET="s", KERNEL_COORDINATOR=f"127.0.0.1:{free_port()}")  # (nobody)
    done = subprocess.run([sys.executable, "-m", "kernel", "submit", pipeline, "--state-dir",
                           tmp_path / "state", "--epoch-interval", given],
                          capture_output=True, text=True, timeout=60, env=env)
    assert (done.returncode, done.stderr) == (
        2, f"error: epoch_interval must be a positive number of seconds, got {float(given)!r}\n")
