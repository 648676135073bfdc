"""`python -m kernel.run` of a recovery test's pipeline file: a run that a
crash point kills (`KERNEL_CRASH_AT`, see kernel/_faults.py) and the run
that resumes it, with a state_dir and short epochs; what such runs left
(the newest complete epoch, the lines a file sink published)."""

from __future__ import annotations

import json
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


def newest_complete(state: Path) -> int:
    """The newest complete epoch in the snapshot store at `state` (0: none)."""
    from state import SnapshotStore

    store = SnapshotStore(state)
    try:
        completed = store.completed()
    finally:
        store.close()
    return completed[0][0] if completed else 0


def visible_lines(directory: Path) -> list:
    """The JSON lines of a file sink's published parts in `directory`."""
    lines = []
    for path in sorted(directory.glob("part-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines
