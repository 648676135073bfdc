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


def complete_snapshots(state_file: Path) -> dict[int, list[dict]]:
    """Read-only, while a run writes it: each complete epoch of the store
    file `state_file` and its kernels' snapshots (step index -> the step's
    pickled part, or "ended"), {} until there are any. A kernel that had
    ended everything before an epoch stands in it by its FINAL snapshot."""
    import pickle
    import sqlite3

    from state import SnapshotStore

    if not state_file.exists():
        return {}
    db = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True, timeout=30)
    try:
        found = {}
        for epoch, kernels in db.execute("SELECT epoch, kernels FROM complete WHERE final = 0"):
            rows = dict(db.execute(
                "SELECT kernel, blob FROM snapshots WHERE kernels = ? AND epoch = ? ORDER BY kernel",
                (kernels, epoch)))
            finals = dict(db.execute("SELECT kernel, blob FROM snapshots WHERE kernels = ? AND epoch = ?",
                                     (kernels, SnapshotStore.FINAL)))
            blobs = [rows.get(k, finals.get(k)) for k in range(kernels)]
            if None not in blobs:  # (an epoch's rows may go while this reads: the next look sees the newer)
                found[epoch] = [pickle.loads(blob) for blob in blobs]
        return found
    except sqlite3.OperationalError:  # the tables not created yet
        return {}
    finally:
        db.close()


def run_cli_until(tmp: Path, cores: int, wanted, *, epoch_interval: str = "0.02", timeout: float = 90,
                  **env_vars) -> int:
    """Run `tmp/pipeline.py` as `run_cli` does, and kill it (SIGKILL to the
    launcher: its kernels die with it) once its store holds a complete
    epoch whose kernels' snapshots `wanted(snapshots)` accepts (see
    `complete_snapshots`); that epoch. The pipeline must hold the run open
    until then (the test synchronises on the store, not on time)."""
    import signal
    import time

    env = dict(os.environ, **{name: str(value) for name, value in env_vars.items()})
    env.pop("KERNEL_CRASH_AT", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "kernel.run", str(tmp / "pipeline.py"), "--cores", str(cores),
         "--state-dir", str(tmp / "state"), "--epoch-interval", epoch_interval],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            found = complete_snapshots(tmp / "state" / "snapshots.sqlite")
            accepted = [epoch for epoch, snapshots in sorted(found.items()) if wanted(snapshots)]
            if accepted:
                return accepted[-1]
            if process.poll() is not None:
                raise AssertionError(f"the run ended before the wanted epoch: {process.stderr.read()}")
            if time.monotonic() > deadline:
                raise AssertionError("no wanted epoch in time")
            time.sleep(0.005)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
