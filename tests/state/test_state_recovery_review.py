"""An adversarial review of exactly-once state and recovery: each test here
states a promise of the README ("State, snapshots and recovery", "Several
cores") and checks it against a plain Python loop over the input. Each
failed on the code it was written against, for the reason its docstring
gives:

* a snapshot that fails its checksum is not skipped for the previous
  complete epoch where a cluster wrote the state_dir (resumed by the same
  cluster, or by one process): a bare `CorruptSnapshot` naming neither the
  state_dir nor the file, and no way to resume;
* a corrupt snapshot in the generation a one-process run started after a
  cluster makes the next run start afresh there; killed, the run after it
  resumes the cluster's older epoch: records lost;
* another application's SQLite database as `snapshots.sqlite` is taken as
  an empty store (tables written into it, no word);
* a cluster of another shape is refused where an earlier cluster claimed
  its files but completed no epoch;
* a run refused because the state_dir is in use has already rewritten the
  store's kernel count and deleted the live run's newest snapshots.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT / "tests" / "kernel"))
from _ports import free_ports, wait_until  # noqa: E402

from tests._crash_runs import assert_each_once  # noqa: E402

N = 2000
SECRET = "state-recovery-review"

PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow
    from operators import Tumbling

    N = int(os.environ["N"])
    OUT = os.environ["OUT"]

    def slow(x):
        if x % 20 in (0, 1) and os.environ.get("RUN") != "resumed":
            time.sleep(0.004)  # spread the first run over many epochs
        return x

    flow = Dataflow("review_recovery")
    numbers = flow.from_iterable(range(N), batch_size=25, timestamp=lambda x: x / 100).map(slow)
    numbers.to_files(os.path.join(OUT, "records"))
    numbers.key_by(lambda x: x % 5).count().to_files(os.path.join(OUT, "counts"))
    numbers.key_by(lambda x: x % 3).window(Tumbling(1.0)).sum().to_files(os.path.join(OUT, "windows"))
    """
)


def _lines(directory: Path) -> list:
    return [json.loads(line) for path in sorted(directory.glob("part-*.jsonl"))
            for line in path.read_text().splitlines()]


def assert_exactly_once(out: Path, n: int = N) -> None:
    """PIPELINE's outputs against a plain loop over range(n)."""
    assert_each_once(_lines(out / "records"), n)
    counts = Counter(x % 5 for x in range(n))
    assert sorted(map(tuple, _lines(out / "counts"))) == sorted(counts.items())
    sums = Counter()
    for x in range(n):
        sums[(x % 3, float(x // 100), float(x // 100 + 1))] += x
    windows = [(key, start, end, total) for key, (start, end), total in _lines(out / "windows")]
    assert sorted(windows) == sorted((*k, v) for k, v in sums.items())
    assert list(out.rglob(".part-*")) == []


def complete_epochs(path: Path) -> list[int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return [e for (e,) in db.execute("SELECT epoch FROM complete ORDER BY epoch DESC")]
    finally:
        db.close()


def start_cluster(tmp: Path, crash: tuple[int, str] | None = None, resumed: bool = False,
                  processes: int = 2, cores: int = 1) -> list:
    """`processes` processes of `cores` kernels each on loopback, one shared state_dir."""
    peers = ",".join(f"127.0.0.1:{port}" for port in free_ports(processes))
    procs = []
    for p in range(processes):
        env = dict(os.environ, N=str(N), OUT=str(tmp / "out"), KERNEL_SECRET=SECRET,
                   RUN="resumed" if resumed else "first")
        env.pop("KERNEL_CRASH_AT", None)
        if crash is not None and crash[0] == p:
            env["KERNEL_CRASH_AT"] = crash[1]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "kernel.run", str(tmp / "pipeline.py"), "--state-dir", str(tmp / "state"),
             "--epoch-interval", "0.02", "--process-id", str(p), "--peers", peers,
             "--startup-timeout", "20", "--cores", str(cores)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs, timeout: float = 60) -> list[tuple[int, str]]:
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [(p.returncode, err) for p, (_, err) in zip(procs, outs, strict=True)]


def crashed_cluster_with_a_corrupt_newest_epoch(tmp: Path) -> int:
    """A cluster killed (kernel 1, SIGKILL, at its 4th snapshot) whose newest
    complete epoch's snapshot of kernel 1 then fails its checksum (a torn
    write, a bit flip on disk); returns that epoch."""
    (tmp / "pipeline.py").write_text(PIPELINE)
    first = finish(start_cluster(tmp, crash=(1, "snapshot:4@1")))
    assert all(code != 0 for code, _ in first), first
    store1 = tmp / "state" / "snapshots-process1.sqlite"
    epoch = complete_epochs(tmp / "state" / "snapshots-process0.sqlite")[0]
    assert epoch >= 2 and epoch - 1 in complete_epochs(store1)  # an older complete epoch to fall back to
    db = sqlite3.connect(store1)
    changed = db.execute("UPDATE snapshots SET crc = (crc + 1) % 4294967296 WHERE epoch = ? AND kernel = 1",
                         (epoch,)).rowcount
    db.commit()
    db.close()
    assert changed == 1
    return epoch


@pytest.fixture(scope="module")
def _crashed_cluster(tmp_path_factory) -> Path:
    """crashed_cluster_with_a_corrupt_newest_epoch's directory (pipeline,
    state_dir, out), made once for this module: the tests that resume it
    each work on a copy of their own (copied_crashed_cluster)."""
    tmp = tmp_path_factory.mktemp("crashed_cluster")
    crashed_cluster_with_a_corrupt_newest_epoch(tmp)
    return tmp


@pytest.fixture
def copied_crashed_cluster(_crashed_cluster, tmp_path) -> Path:
    """A copy of the module's crashed cluster with a corrupt newest epoch, in
    this test's tmp_path: its state_dir and out as the crash left them (no
    process holds them; the snapshots record no path, the pipeline finds
    its out from OUT), so resuming it is resuming the original."""
    for name in ("pipeline.py", "state", "out"):
        source = _crashed_cluster / name
        if not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, tmp_path / name)
        else:
            shutil.copy2(source, tmp_path / name)
    return tmp_path


def test_a_cluster_resumed_past_a_snapshot_that_fails_its_checksum_falls_back_to_the_previous_epoch(
        copied_crashed_cluster):
    """README, Recovery: "A snapshot that fails its checksum (torn, corrupted)
    is skipped with a warning for the previous complete epoch". On a cluster
    the kernel that read it failed instead (`kernel 1 failed: CorruptSnapshot:
    the snapshot of kernel 1 at epoch 3 fails its checksum`), naming no
    state_dir and no file, and every later run of the same commands failed
    the same way."""
    tmp_path = copied_crashed_cluster
    second = finish(start_cluster(tmp_path, resumed=True))
    for code, err in second:
        assert code == 0, err
    assert any("checksum" in err for _, err in second)  # the warning
    assert_exactly_once(tmp_path / "out")


def test_one_process_resuming_a_clusters_state_past_a_corrupt_snapshot_falls_back(copied_crashed_cluster):
    """The same state_dir resumed by one process of two kernels (README:
    a cluster's state may be resumed by one process from a shared
    state_dir): the run ended with `error: the snapshot of kernel 1 at
    epoch 3 fails its checksum` (no state_dir, no file) instead of falling
    back to the previous complete epoch, which both processes still hold."""
    tmp_path = copied_crashed_cluster
    env = dict(os.environ, N=str(N), OUT=str(tmp_path / "out"), RUN="resumed")
    env.pop("KERNEL_CRASH_AT", None)
    alone = subprocess.run([sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--state-dir",
                            str(tmp_path / "state"), "--epoch-interval", "0.02", "--cores", "2"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert alone.returncode == 0, alone.stderr
    assert "checksum" in alone.stderr
    assert_exactly_once(tmp_path / "out")


def run_alone(tmp: Path, crash: str | None = None, cores: int = 1, resumed: bool = False):
    env = dict(os.environ, N=str(N), OUT=str(tmp / "out"), RUN="resumed" if resumed else "first")
    env.pop("KERNEL_CRASH_AT", None)
    if crash:
        env["KERNEL_CRASH_AT"] = crash
    return subprocess.run([sys.executable, "-m", "kernel.run", str(tmp / "pipeline.py"), "--state-dir",
                           str(tmp / "state"), "--epoch-interval", "0.02", "--cores", str(cores)],
                          env=env, capture_output=True, text=True, timeout=60)


def test_a_corrupt_snapshot_after_a_cluster_never_mixes_two_lines_of_epochs(tmp_path):
    """A cluster's state (epochs up to E, in snapshots-process{P}.sqlite) is
    resumed by one process, which starts the generation snapshots-eE.sqlite,
    completes epoch E+1 there and is killed. That snapshot then fails its
    checksum. The next run falls back only inside snapshots-eE.sqlite: it
    finds no intact epoch there and starts afresh ("no complete epoch reads
    back intact; starting afresh", though the cluster's epoch E is intact),
    numbering its epochs 1, 2... in that file and deleting every published
    file past epoch 0. Killed after its first epoch, it leaves the cluster's
    epoch E as the newest complete one anywhere, and the run after it
    resumes E, keeping the afresh run's epoch-1 files: records between the
    two lines of epochs are lost (165 of 2,000 here). Expected: the fallback
    goes to the previous complete epoch, E (or at least never continues an
    abandoned line): every record once."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    state = tmp_path / "state"
    first = finish(start_cluster(tmp_path, crash=(1, "snapshot:4@1")))
    assert all(code != 0 for code, _ in first), first
    cluster_epoch = complete_epochs(state / "snapshots-process0.sqlite")[0]
    assert cluster_epoch >= 1
    # one process resumes it and completes one epoch of its own (killed
    # between writing its second snapshot and marking it complete)
    second = run_alone(tmp_path, crash="snapshot:2")
    assert second.returncode != 0 and f"resuming from epoch {cluster_epoch}\n" in second.stderr, second.stderr
    generation = state / f"snapshots-e{cluster_epoch}.sqlite"
    assert complete_epochs(generation) == [cluster_epoch + 1]
    db = sqlite3.connect(generation)
    assert db.execute("UPDATE snapshots SET crc = (crc + 1) % 4294967296 WHERE epoch = ?",
                      (cluster_epoch + 1,)).rowcount == 1
    db.commit()
    db.close()
    run_alone(tmp_path, crash="snapshot:2")  # killed again, after one complete epoch
    last = run_alone(tmp_path, resumed=True)
    assert last.returncode == 0, last.stderr
    assert_exactly_once(tmp_path / "out")


def test_a_state_dir_whose_store_file_is_another_applications_database_is_refused(tmp_path):
    """A `snapshots.sqlite` that is no snapshot store (another application's
    SQLite database, put there by mistake or a state_dir pointed at the
    wrong directory) is foreign: README, Recovery, refuses a state_dir
    written by another flow or in another layout with `state.StateError`.
    This one was taken as an empty store: the run wrote its tables into the
    other application's database and ran afresh, without a word."""
    from kernel import Dataflow, run
    from state import StateError

    state = tmp_path / "state"
    state.mkdir()
    other = sqlite3.connect(state / "snapshots.sqlite")
    other.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    other.execute("INSERT INTO users (name) VALUES ('ann')")
    other.commit()
    other.close()
    flow = Dataflow("foreign")
    flow.from_iterable(range(100)).key_by(lambda x: x % 3).count().to_files(tmp_path / "out")
    try:
        run(flow, state_dir=state, epoch_interval=0.01)
        refused = None
    except StateError as exc:
        refused = exc
    db = sqlite3.connect(state / "snapshots.sqlite")
    tables = sorted(name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    db.close()
    assert tables == ["users"], f"the run wrote its tables into another database: {tables}"
    assert refused is not None and "snapshots.sqlite" in str(refused)


def test_a_cluster_of_another_shape_starts_where_an_earlier_cluster_completed_no_epoch(tmp_path):
    """README, On a cluster: "A cluster may resume on another number of
    processes or of cores each ... when the state_dir is one directory that
    every process shares". A cluster of 2 processes that was killed before
    its first epoch completed leaves snapshots-process{P}.sqlite claimed for
    its shape and nothing to resume; a cluster of 3 processes in the same
    shared state_dir is then a fresh start, but processes 0 and 1 refused
    it (and process 2 lost them): "state_dir ... was written as process 0 of 2, 1 core each and
    this run is process 0 of 3, 1 core each: a cluster resumes with the same
    processes and cores per process" (the fresh-start generation's file
    names carry no shape). Only deleting the files by hand let it run."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    first = finish(start_cluster(tmp_path, crash=(1, "snapshot:1@1")))
    assert all(code != 0 for code, _ in first), first
    assert all(complete_epochs(path) == [] for path in (tmp_path / "state").glob("snapshots*.sqlite"))
    second = finish(start_cluster(tmp_path, resumed=True, processes=3))
    for code, err in second:
        assert code == 0, err
    assert_exactly_once(tmp_path / "out")


HELD_PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    OUT = os.environ["OUT"]

    def wait_for(name):  # (the test makes it; 120 s: a bound for a hang only, say a test killed)
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(OUT, name)) and time.monotonic() < deadline:
            time.sleep(0.005)

    def held(x):
        if x == 1:  # kernel 1's first (record i is kernel i % 2's): it waits here until released
            open(os.path.join(OUT, "held"), "w").close()  # (the test samples the store once it is)
            wait_for("release")
        elif x % 2 == 0:
            # Kernel 0 goes on, snapshotting epochs kernel 1 cannot complete (two
            # past the newest complete, AHEAD), and ends only once released: ended,
            # its epochs' snapshots would be gone for its final one. Kernel 1 is held
            # at its first record, before it snapshots more than the epoch its start
            # may have taken: held at record 3001 (kernel 0 waiting for it at 3002)
            # it had taken two under load, and kernel 0 could take none past them
            # (1 of 3 runs beside two CPU burners).
            if x < 1000:
                time.sleep(0.0005)  # (not all at once: a few epochs on the way)
            elif x == 7998:
                wait_for("release")
        return x

    flow = Dataflow("held")
    flow.from_iterable(range(8000), batch_size=20).map(held).to_files(os.path.join(OUT, "records"))
    """
)


def _store_past_kernel_1(store: Path) -> tuple:
    """(newest complete epoch, kernel 1's newest snapshot, (epoch, kernel) of
    kernel 0's snapshots past both), or None before the store is made."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
    try:
        newest = db.execute("SELECT coalesce(max(epoch), 0) FROM complete").fetchone()[0]
        kernel_1 = db.execute("SELECT coalesce(max(epoch), 0) FROM snapshots WHERE kernel = 1 AND epoch < ?",
                              (1 << 62,)).fetchone()[0]
        rows = db.execute("SELECT epoch, kernel FROM snapshots WHERE kernel = 0 AND epoch > ? AND epoch < ?",
                          (max(newest, kernel_1), 1 << 62)).fetchall()
        return newest, kernel_1, rows
    except sqlite3.OperationalError:  # not created yet
        return None
    finally:
        db.close()


def test_a_run_refused_because_the_state_dir_is_in_use_leaves_the_live_runs_store_alone(tmp_path):
    """kernel/_facade.py `_state_dir_held`: a second run on a state_dir that a
    live run holds (a retry, a cron job started twice) is refused: "two runs
    on one state_dir would snapshot into one store". But the refused run
    sets up the store before it asks for the lock (`plan_for` builds
    `Snapshots` first): it claims the store, rewriting its `kernels` to its
    own --cores, and `discard_after(newest complete epoch)` deletes the live
    run's snapshots written past that epoch; only then is it refused.

    Here kernel 1 of a live run on 2 kernels is held (a file gate) while
    kernel 0 snapshots past the newest complete epoch; a second run with
    --cores 3 is refused, and has deleted kernel 0's snapshot. Kernel 1,
    whose store connection reads `kernels` at its first write, then writes
    its snapshots as one of 3 kernels; the live run ends, its final epoch
    marked complete for 2 kernels, and the mark deletes kernel 1's FINAL
    snapshot (of a kernel count neither kept epoch has). The same command
    run again finds no complete epoch that reads back ("no complete epoch
    reads back intact; starting afresh") and runs the whole flow again,
    instead of saying it already ran to the end: any crash of the live run
    after the refused one would likewise have lost all its progress."""
    import time

    (tmp_path / "pipeline.py").write_text(HELD_PIPELINE)
    out = tmp_path / "out"
    out.mkdir()
    store = tmp_path / "state" / "snapshots.sqlite"
    env = dict(os.environ, OUT=str(out))
    env.pop("KERNEL_CRASH_AT", None)

    def command(cores: int) -> list[str]:
        return [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--cores", str(cores),
                "--state-dir", str(tmp_path / "state"), "--epoch-interval", "0.01"]

    live = subprocess.Popen(command(2), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Sampled once kernel 1 is held: until then epochs still complete, and the
        # live run itself drops the snapshots of epochs older than the newest
        # complete one (a CI run sampled epoch 1's early and blamed the refused run)
        # And once kernel 1's store has been still for 0.3 s: its snapshot of an
        # epoch could still be on the way as it was held (its writer thread),
        # completing an epoch after the sample (a CI run was so left with nothing
        # to check); no event tells when that thread is done.
        # The live run's start takes what the machine allows: 120 s is a bound
        # for a hang only (30 s from the run's start went by once under heavy
        # load); the 30 s for kernel 0's snapshots count from kernel 1 held.
        wait_until(lambda: (out / "held").exists() or live.poll() is not None, timeout=120,
                   what="the live run's kernel 1 to be held at its first record")
        deadline = time.monotonic() + 30
        seen, still_since = None, time.monotonic()
        while True:
            assert live.poll() is None, live.communicate()
            assert time.monotonic() < deadline, f"kernel 0 snapshotted nothing past kernel 1's epochs: {seen}"
            state = _store_past_kernel_1(store) if store.exists() else None
            if state != seen:
                seen, still_since = state, time.monotonic()
            elif state is not None and state[2] and time.monotonic() - still_since >= 0.3:
                break
            time.sleep(0.01)
        before = seen[2]
        second = subprocess.run(command(3), env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0 and "in use by another run" in second.stderr, second.stderr
        db = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=30)
        after = set(db.execute("SELECT epoch, kernel FROM snapshots").fetchall())
        newest = db.execute("SELECT coalesce(max(epoch), 0) FROM complete").fetchone()[0]
        db.close()
        # (an epoch kernel 1 had snapshotted before it was held may still have
        # completed meanwhile, and the live run dropped the older ones: only
        # what is still past the newest complete epoch must be there)
        before = [row for row in before if row[0] > newest]
        assert before, "kernel 0 snapshotted nothing past the newest complete epoch"
    finally:
        (out / "release").touch()
        try:
            _, err = live.communicate(timeout=60)
        finally:
            live.kill()
    assert live.returncode == 0, err
    again = subprocess.run(command(2), env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    problems = []
    if not set(before) <= after:
        problems.append(f"the refused run deleted the live run's snapshots {sorted(set(before) - after)}")
    if "already ran to the end" not in again.stderr:
        problems.append(f"the finished flow ran again: {again.stderr.strip()[:300]}")
    assert not problems, problems
    assert_each_once(_lines(out / "records"), 8000)
