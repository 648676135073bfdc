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

# Appended to a recovery test's pipeline text (its flow named `flow`): a
# source on every kernel that reads nothing and, in a run given a crash
# point (`run_cli` sets HELD_OPEN, in seconds), ends only HELD_OPEN
# seconds after it starts, so that the run cannot end before the crash
# point kills it, however slowly epochs complete on a loaded machine (a
# paced input that ended first left the crash point unreached, the run
# finished). Without HELD_OPEN (the resumed run) it ends at once; should
# the crash point never come, the run ends after HELD_OPEN seconds, and
# the test says so.
HELD_OPEN = """

import asyncio as _asyncio, os as _os, time as _time

async def _held_open():
    deadline = _time.monotonic() + float(_os.environ.get("HELD_OPEN", "0"))
    while _time.monotonic() < deadline:
        await _asyncio.sleep(0.02)
    return
    yield

flow.from_async_iterable(_held_open, name="held open")
"""
HELD_OPEN_S = 60


def run_cli(tmp: Path, cores: int, crash: str | None, *, epoch_interval: str = "0.02", **env_vars):
    """Run `tmp/pipeline.py` on `cores` kernels with `tmp/state` as its
    state_dir; `crash`: the crash point, or None; `env_vars`: the
    pipeline's own variables. With a crash point, a pipeline that appends
    HELD_OPEN cannot end before it."""
    env = dict(os.environ, **{name: str(value) for name, value in env_vars.items()})
    env.pop("KERNEL_CRASH_AT", None)
    if crash:
        env["KERNEL_CRASH_AT"] = crash
        env.setdefault("HELD_OPEN", str(HELD_OPEN_S))  # (for a pipeline that appends HELD_OPEN)
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
    ended everything before an epoch stands in it by its FINAL snapshot
    (`_kernel_blob`)."""
    return _complete_in([state_file], lambda k: 0)


def _complete_in(files: list[Path], file_of) -> dict[int, list[dict]]:
    """`complete_snapshots` of the epochs that `files[0]` marks complete,
    kernel k's snapshots read from `files[file_of(k)]`."""
    import pickle
    import sqlite3

    from state import SnapshotStore

    if not all(f.exists() for f in files):
        return {}
    dbs = [sqlite3.connect(f"file:{f}?mode=ro", uri=True, timeout=30) for f in files]
    try:
        found = {}
        for epoch, kernels in dbs[0].execute("SELECT epoch, kernels FROM complete WHERE final = 0"):
            blobs = [_kernel_blob(dbs[file_of(k)], epoch, k, kernels, SnapshotStore.FINAL)
                     for k in range(kernels)]
            if None not in blobs:
                found[epoch] = [pickle.loads(blob) for blob in blobs]
        return found
    except sqlite3.OperationalError:  # the tables not created yet
        return {}
    finally:
        for db in dbs:
            db.close()


def _kernel_blob(db, epoch: int, kernel: int, kernels: int, final: int) -> bytes | None:
    """`kernel`'s snapshot of `epoch` in the store `db`: its own, or its
    FINAL one where it had ended before (no own snapshot of that epoch or a
    later one); None where its rows of that epoch are gone (the store
    deletes an old epoch's snapshots a moment before its complete mark:
    taken for the FINAL one, they showed a kernel ended that was not)."""
    rows = dict(db.execute("SELECT epoch, blob FROM snapshots WHERE kernel = ? AND kernels = ? "
                           "AND epoch >= ?", (kernel, kernels, epoch)))
    if epoch in rows:
        return rows[epoch]
    return rows.get(final) if set(rows) <= {final} else None


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


def cluster_complete_snapshots(files: list[Path]) -> dict[int, list[dict]]:
    """`complete_snapshots` of a cluster of one-core processes: `files[k]`
    is the store file of process k (its kernel k's snapshots); process
    0's marks the epochs complete."""
    return _complete_in(files, lambda k: k)


def run_cluster(tmp: Path, dirs: list[Path], *, until=None, epoch_interval: str = "0.02", timeout: float = 90,
                **env_vars) -> list[tuple[int, str]]:
    """Run `tmp/pipeline.py` as a cluster of len(dirs) one-core processes on
    loopback, process p with the state_dir `dirs[p]`; each one's (return
    code, stderr). With `until`, killed (every launcher, SIGKILL) once a
    complete epoch's snapshots satisfy it, as `run_cli_until`."""
    import signal
    import time

    sys.path.insert(0, str(Path(__file__).resolve().parent / "kernel"))
    from _ports import free_ports

    peers = ",".join(f"127.0.0.1:{port}" for port in free_ports(len(dirs)))
    env = dict(os.environ, KERNEL_SECRET="redis-cluster-secret",
               **{name: str(value) for name, value in env_vars.items()})
    env.pop("KERNEL_CRASH_AT", None)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "kernel.run", str(tmp / "pipeline.py"), "--state-dir", str(directory),
         "--epoch-interval", epoch_interval, "--process-id", str(p), "--peers", peers, "--startup-timeout",
         "20", "--cores", "1"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for p, directory in enumerate(dirs)]
    try:
        if until is not None:
            files = [directory / f"snapshots-process{p}.sqlite" for p, directory in enumerate(dirs)]
            deadline = time.monotonic() + timeout
            while not any(until(s) for s in cluster_complete_snapshots(files).values()):
                if any(p.poll() is not None for p in procs):
                    raise AssertionError("a process ended before the wanted epoch: "
                                         + " | ".join(p.stderr.read() for p in procs if p.poll() is not None))
                if time.monotonic() > deadline:
                    raise AssertionError("no wanted epoch in time")
                time.sleep(0.005)
            for p in procs:
                os.kill(p.pid, signal.SIGKILL)
        outs = [p.communicate(timeout=timeout)[1] for p in procs]
        return [(p.returncode, err) for p, err in zip(procs, outs)]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def wait_until_unlocked(state_dir, timeout: float = 30) -> None:
    """Waits for the killed run's kernels to be gone: they hold the
    state_dir's lock until then."""
    import fcntl
    import time

    deadline = time.monotonic() + timeout
    fd = os.open(state_dir / ".running-0", os.O_RDWR)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                assert time.monotonic() < deadline, "the killed run's kernels still hold the state_dir"
                time.sleep(0.01)
            else:
                fcntl.flock(fd, fcntl.LOCK_UN)
                return
    finally:
        os.close(fd)


def assert_each_once(records, n: int) -> None:
    """`records` hold each of `range(n)` exactly once (`Counter` equality).
    A failure says how many were lost, repeated or not in the range, and
    which (the first and last few): pytest's diff of two Counters of
    40,000 keys left only their tail in CI's output, not the summary."""
    from collections import Counter

    counts = Counter(records)
    if counts == Counter(range(n)):
        return
    lost = [r for r in range(n) if not counts.get(r)]
    repeated = [(r, c) for r, c in counts.items() if c > 1 and r in range(n)]
    others = [(r, c) for r, c in counts.items() if r not in range(n)]
    raise AssertionError(f"of range({n}): {len(lost)} lost {_few(lost)}, {len(repeated)} repeated "
                         f"{_few(sorted(repeated))}, {len(others)} others {_few(others)}")


def _few(items: list) -> str:
    return repr(items) if len(items) <= 10 else f"{items[:5]!r}..{items[-5:]!r}"
