"""Cluster snapshots and recovery: two real `python -m kernel.run` processes
on loopback, with a `--state-dir` each (or one they share). Hypothesis picks
which process is killed (SIGKILL: one of its kernels at a crash point, or
its whole launcher once its store holds a few complete epochs); the same
commands run again resume from the epoch complete on both, and the visible
files hold every record exactly once, equal to a plain loop's results.

Before the rerun, no file of an epoch that process 0 (which completes epochs
for the cluster) had not completed is visible on either machine: files are
published only once their epoch is durable everywhere."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

from hypothesis import example, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests" / "kernel"))
from _ports import free_ports  # noqa: E402

from tests._crash_runs import assert_each_once  # noqa: E402

N = 3000
SECRET = "cluster-recovery-secret"

PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow
    from operators import Tumbling

    N = int(os.environ["N"])
    OUT = os.environ["OUT"]

    # A run that is killed must span many epochs (up to 6 of them before
    # the kill, well before its end); the run that resumes it, only a few
    # of its own, at a fifth of the sleeps.
    EVERY = 100 if os.environ.get("RUN") == "resumed" else 20

    def slow(x):
        if x % EVERY in (0, 1):  # on both kernels
            time.sleep(0.004)  # spread the run over many epochs
        return x

    flow = Dataflow("cluster_recovery")
    numbers = flow.from_iterable(range(N), batch_size=25, timestamp=lambda x: x / 100).map(slow)
    numbers.to_files(os.path.join(OUT, "records"))
    numbers.key_by(lambda x: x % 5).count().to_files(os.path.join(OUT, "counts"))
    numbers.key_by(lambda x: x % 3).window(Tumbling(1.0)).sum().to_files(os.path.join(OUT, "windows"))
    """
)


def state_dir(tmp: Path, process: int, shared: bool) -> Path:
    return tmp / "state" if shared else tmp / f"state{process}"


def store_file(tmp: Path, process: int, shared: bool) -> Path:
    return state_dir(tmp, process, shared) / f"snapshots-process{process}.sqlite"


def complete_epochs(path: Path) -> list[tuple[int, bool]]:
    """(epoch, final) of a store's complete epochs, newest first (read-only)."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return [(e, bool(f)) for e, f in db.execute("SELECT epoch, final FROM complete ORDER BY epoch DESC")]
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        db.close()


def start_cluster(tmp: Path, *, shared: bool, crash: tuple[int, str] | None = None, n: int = N,
                  pipeline: str = "pipeline.py", dirs=None, interval: str = "0.02", cores: int = 1,
                  processes: int = 2, resumed: bool = False) -> list:
    """Every process, started at once; `crash=(process, spec)` sets
    KERNEL_CRASH_AT for that process only; `resumed`: a run that resumes a
    killed one and only has to finish (PIPELINE sleeps less)."""
    peers = ",".join(f"127.0.0.1:{port}" for port in free_ports(processes))
    procs = []
    for p in range(processes):
        env = dict(os.environ, N=str(n), OUT=str(tmp / "out"), KERNEL_SECRET=SECRET,
                   RUN="resumed" if resumed else "first")
        env.pop("KERNEL_CRASH_AT", None)
        if crash is not None and crash[0] == p:
            env["KERNEL_CRASH_AT"] = crash[1]
        directory = dirs[p] if dirs is not None else state_dir(tmp, p, shared)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "kernel.run", str(tmp / pipeline), "--state-dir", str(directory),
             "--epoch-interval", interval, "--process-id", str(p), "--peers", peers,
             "--startup-timeout", "20", "--cores", str(cores)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, timeout: float = 90) -> list[tuple[int, str]]:
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, err) for p, (_, err) in zip(procs, outs, strict=True)]


def kill_after(procs, tmp: Path, process: int, shared: bool, epochs: int) -> None:
    """SIGKILL `process`'s launcher (its kernels and relay die with it) once
    its store holds `epochs` complete epochs."""
    path = store_file(tmp, process, shared)
    deadline = time.monotonic() + 60
    while not complete_epochs(path) or complete_epochs(path)[0][0] < epochs:
        assert procs[process].poll() is None, "the run ended before the kill"
        assert time.monotonic() < deadline, "no complete epochs"
        time.sleep(0.005)
    os.kill(procs[process].pid, signal.SIGKILL)


_PART = re.compile(r"^\.?part-k(\d+)-e(\d+)\.jsonl$")


def visible_epochs(out: Path) -> set[int]:
    return {int(_PART.match(p.name).group(2)) for p in out.rglob("part-*.jsonl")}


def visible_lines(directory: Path) -> list:
    lines = []
    for path in sorted(directory.glob("part-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


def assert_exactly_once(out: Path, n: int = N) -> None:
    """PIPELINE's outputs for `n` records, each exactly once, against a plain loop."""
    assert_each_once(visible_lines(out / "records"), n)
    counts = Counter(x % 5 for x in range(n))
    assert sorted(map(tuple, visible_lines(out / "counts"))) == sorted(counts.items())
    sums = Counter()
    for x in range(n):
        sums[(x % 3, float(x // 100), float(x // 100 + 1))] += x
    windows = [(key, start, end, total) for key, (start, end), total in visible_lines(out / "windows")]
    assert sorted(windows) == sorted((*k, v) for k, v in sums.items())
    assert list(out.rglob(".part-*")) == []


@settings(max_examples=4, deadline=None)
@example(victim=1, how="launcher", nth=2, shared=False)
@example(victim=0, how="snapshot", nth=3, shared=True)
@given(
    victim=st.sampled_from([0, 1]),
    how=st.sampled_from(["batch", "snapshot", "commit", "launcher"]),
    nth=st.integers(1, 4),
    shared=st.booleans(),
)
def test_a_cluster_that_lost_a_process_resumes_and_publishes_every_record_once(
    tmp_path_factory, victim, how, nth, shared
):
    tmp = tmp_path_factory.mktemp("cluster_recovery")
    (tmp / "pipeline.py").write_text(PIPELINE)
    if how == "launcher":
        procs = start_cluster(tmp, shared=shared)
        kill_after(procs, tmp, victim, shared, nth)
    else:  # kernel `victim` (one kernel per process) kills itself at the nth crash point
        procs = start_cluster(tmp, shared=shared, crash=(victim, f"{how}:{nth}@{victim}"))
    first = finish(procs)
    assert all(code != 0 for code, _ in first), first
    epoch, finished = (complete_epochs(store_file(tmp, 0, shared)) or [(0, False)])[0]
    assert not finished
    # published only once durable everywhere: process 0 had completed them
    assert max(visible_epochs(tmp / "out"), default=0) <= epoch

    second = finish(start_cluster(tmp, shared=shared, resumed=True))
    for code, err in second:
        assert code == 0, err
        if epoch:
            assert f"resuming from epoch {epoch}\n" in err
    assert_exactly_once(tmp / "out")
    final, done = complete_epochs(store_file(tmp, 0, shared))[0]
    # the resumed run took epochs of its own (with no sleeps it is 1 past)
    assert done and final >= epoch + 2, (epoch, final)


def test_a_finished_cluster_run_is_not_run_again(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    first = finish(start_cluster(tmp_path, shared=False, n=500))
    assert [code for code, _ in first] == [0, 0], first
    assert_exactly_once(tmp_path / "out", 500)
    (epoch, final), *_ = complete_epochs(store_file(tmp_path, 0, False))
    assert final
    assert complete_epochs(store_file(tmp_path, 1, False))[0] == (epoch, True)
    before = {p.name: p.stat().st_ino for p in (tmp_path / "out").rglob("part-*")}
    again = finish(start_cluster(tmp_path, shared=False, n=500))
    for code, err in again:
        assert code == 0, err
        assert f"already ran to the end (epoch {epoch})" in err
    assert {p.name: p.stat().st_ino for p in (tmp_path / "out").rglob("part-*")} == before
    assert_exactly_once(tmp_path / "out", 500)


OTHER_FLOW = PIPELINE.replace('Dataflow("cluster_recovery")', 'Dataflow("another")')


def test_a_state_dir_of_another_flow_on_one_machine_is_refused_naming_the_process(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    (tmp_path / "other.py").write_text(OTHER_FLOW)
    assert [c for c, _ in finish(start_cluster(tmp_path, shared=False, n=100, pipeline="other.py"))] == [0, 0]
    os.replace(tmp_path / "state0", tmp_path / "kept0")  # process 0's is fresh, process 1's another flow's
    results = finish(start_cluster(tmp_path, shared=False, n=100))
    for code, err in results:
        assert code == 1, err
        assert "error: process 1: state_dir" in err and "holds the state of another flow" in err
        assert "Traceback" not in err


def test_a_state_dir_missing_on_one_machine_is_refused_naming_the_process(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    first = finish(start_cluster(tmp_path, shared=False, crash=(0, "snapshot:6@0")))
    assert all(code != 0 for code, _ in first)
    epoch = complete_epochs(store_file(tmp_path, 0, False))[0][0]
    assert epoch >= 1
    os.replace(tmp_path / "state1", tmp_path / "elsewhere")  # as if on another machine's disk
    refused = finish(start_cluster(tmp_path, shared=False))
    for code, err in refused:
        assert code == 1, err
        assert (f"error: process 1: state_dir '{tmp_path / 'state1'}' holds no snapshots of this flow, "
                f"but process 0's is at epoch {epoch}") in err
    # put back, the same commands resume
    assert not (tmp_path / "state1").exists()  # the refused run wrote nothing
    os.replace(tmp_path / "elsewhere", tmp_path / "state1")
    second = finish(start_cluster(tmp_path, shared=False, resumed=True))
    assert [code for code, _ in second] == [0, 0], second
    assert_exactly_once(tmp_path / "out")


def run_alone(tmp: Path, state: Path, cores: int, crash: str | None = None, n: int = N,
              resumed: bool = False):
    """The pipeline on one process of `cores` kernels (`crash`: KERNEL_CRASH_AT;
    `resumed`: as start_cluster's)."""
    env = dict(os.environ, N=str(n), OUT=str(tmp / "out"), RUN="resumed" if resumed else "first")
    env.pop("KERNEL_CRASH_AT", None)
    if crash:
        env["KERNEL_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-m", "kernel.run", str(tmp / "pipeline.py"), "--state-dir",
                           str(state), "--epoch-interval", "0.02", "--cores", str(cores)],
                          env=env, capture_output=True, text=True, timeout=90)


def newest_anywhere(state: Path) -> int:
    return max((complete_epochs(path)[:1] or [(0, False)])[0][0] for path in state.glob("snapshots*.sqlite"))


def test_a_run_resumed_on_other_processes_and_cores_from_a_shared_state_dir_is_exact(tmp_path):
    """One process of 2 kernels, then clusters of 2 and 3 processes, then one
    process of one kernel, in one shared state_dir: each run but the last is
    killed (SIGKILL, on its last kernel: the first once an epoch is complete
    everywhere, `committed`, the others after their third snapshot) and the
    next resumes from the newest epoch complete anywhere, reading every old
    kernel's snapshot and cutting it by key group. The visible files hold
    every record once, the counts and window sums are a plain loop's, and
    once the last run has completed epochs of its own, the files of every
    earlier generation are gone."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    state = tmp_path / "state"
    # (killed at its 3rd snapshot, it had now and then completed no epoch under a loaded CI)
    first = run_alone(tmp_path, state, 2, crash="committed:1@1")
    assert first.returncode != 0, "the crash point was never reached"
    shapes = [(2, "snapshot:3@1"), (3, "snapshot:3@2")]
    for processes, crash in shapes:
        epoch = newest_anywhere(state)
        assert epoch >= 1
        results = finish(start_cluster(tmp_path, shared=True, processes=processes,
                                       crash=(processes - 1, crash)))
        assert all(code != 0 for code, _ in results), results
        assert any(f"resuming from epoch {epoch}\n" in err and "move by key group" in err
                   and f"this run has {processes} (a cluster of {processes} processes)" in err
                   for _, err in results), results
    epoch = newest_anywhere(state)
    last = run_alone(tmp_path, state, 1, resumed=True)
    assert last.returncode == 0, last.stderr
    assert f"resuming from epoch {epoch}\n" in last.stderr
    assert_exactly_once(tmp_path / "out")
    generations = sorted(p.name for p in state.glob("snapshots*.sqlite"))
    assert generations == [f"snapshots-e{epoch}.sqlite"], generations


def test_another_shape_from_state_dirs_of_their_own_is_refused_naming_the_process(tmp_path):
    """A cluster's processes with a state_dir each (on their own machines)
    cannot resume on another shape: no process sees every old kernel's
    snapshot. Refused before anything runs, naming the process and saying
    what would do; the same shape then resumes as before."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    # killed once an epoch is complete everywhere (`committed`), not at its 3rd
    # snapshot: under a loaded CI the kill came before any epoch had completed
    first = finish(start_cluster(tmp_path, shared=False, crash=(1, "committed:1@1")))
    assert all(code != 0 for code, _ in first)
    epoch = complete_epochs(store_file(tmp_path, 0, False))[0][0]
    dirs = [tmp_path / f"state{p}" for p in range(3)]
    for code, err in finish(start_cluster(tmp_path, shared=False, processes=3, dirs=dirs)):
        assert code == 1, err
        assert (f"error: process 0: state_dir '{dirs[0]}' lacks the snapshots of kernel 1 of epoch {epoch}, "
                "written by a cluster of 2 processes with 1 core each, and this run is a cluster of 3 "
                "processes with 1 core each: a cluster resumes on another number of processes or cores only "
                "from a state_dir that every process shares") in err
    assert not dirs[2].exists()
    again = finish(start_cluster(tmp_path, shared=False, resumed=True))
    assert [code for code, _ in again] == [0, 0], again
    assert_exactly_once(tmp_path / "out")
