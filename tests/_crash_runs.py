"""`python -m kernel.run` of a recovery test's pipeline file: a run that a
crash point kills (`KERNEL_CRASH_AT`, see kernel/_faults.py) and the run
that resumes it, with a state_dir and short epochs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(tmp: Path, cores: int, crash: str | None, *, epoch_interval: str = "0.02", **env_vars):
    """Run `tmp/pipeline.py` on `cores` kernels with `tmp/state` as its
    state_dir; `crash`: the crash point, or None; `env_vars`: the
    pipeline's own variables."""
    env = dict(os.environ, **{name: str(value) for name, value in env_vars.items()})
    env.pop("KERNEL_CRASH_AT", None)
    if crash:
        env["KERNEL_CRASH_AT"] = crash
    return subprocess.run(
        [sys.executable, "-m", "kernel.run", str(tmp / "pipeline.py"), "--cores", str(cores),
         "--state-dir", str(tmp / "state"), "--epoch-interval", epoch_interval],
        env=env, capture_output=True, text=True, timeout=120)
