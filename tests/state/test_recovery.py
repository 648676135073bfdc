"""Crash and resume: a run killed (SIGKILL) at hypothesis-chosen points —
mid-batch, mid-snapshot, mid-commit — on 1 and 2 kernels, then run again
with the same state_dir, leaves visible files that hold every record exactly
once, and aggregates and windows equal to a crash-free run's.

That it *resumed*, not computed everything again under the same file names,
is checked three ways: the files the crashed run had written for complete
epochs keep their inode and bytes, the resumed run's source hands on exactly
the records those files do not hold, and the run says which epoch it restored
(the store's newest complete one)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from state import FINAL, SnapshotStore
from tests._crash_runs import HELD_OPEN_S, assert_each_once

N = 3000

# Counts the records this run's source hands on (per kernel, written when
# its input ends): a resumed run reads only what its snapshot had not.
COUNT_READ = """
from kernel import Operator

class CountRead(Operator):
    def open(self, context):
        self.read, self.kernel = 0, context.index

    def on_batch(self, port, batch):
        self.read += len(batch)
        self.emit(batch)

    def on_end(self):
        with open(os.path.join(OUT, f"read-{os.environ['RUN']}-k{self.kernel}"), "w") as f:
            f.write(str(self.read))
"""

PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow
    from operators import Tumbling

    N = int(os.environ["N"])
    OUT = os.environ["OUT"]
    """
) + COUNT_READ + textwrap.dedent(
    """
    # A run that a crash point ends must span many epochs (up to 4 of them
    # before its crash, well before its end); the run that resumes it, only
    # a few of its own (the test checks it takes some), at a fifth of the
    # sleeps: ~0.25 s of them on one kernel, not 1.2 s.
    EVERY = 100 if os.environ["RUN"] == "resumed" else 20

    def slow(x):
        if x % EVERY in (0, 1):  # on both kernels
            time.sleep(0.004)  # spread the run over many epochs
        return x

    async def replay():  # an async input that yields the same records on every run
        for x in range(N):
            yield x

    flow = Dataflow("recovery")
    if os.environ.get("SOURCE") == "async":
        numbers = flow.from_async_iterable(replay, batch_size=25, timestamp=lambda x: x / 100)
    else:
        numbers = flow.from_iterable(range(N), batch_size=25, timestamp=lambda x: x / 100)
    numbers = numbers.apply(CountRead).map(slow)
    numbers.to_files(os.path.join(OUT, "records"))
    numbers.key_by(lambda x: x % 5).sum().to_files(os.path.join(OUT, "sums"))
    numbers.key_by(lambda x: x % 3).window(Tumbling(1.0)).count().to_files(os.path.join(OUT, "windows"))
    """
)


def run_cli(tmp: Path, cores: int, crash: str | None, source: str = "iterable", *, run: str = "first",
            out: Path | None = None, interval: str = "0.02", n: int = N):
    env = dict(os.environ, N=str(n), OUT=str(out or tmp / "out"), SOURCE=source, RUN=run)
    env.pop("KERNEL_CRASH_AT", None)
    if crash:
        env["KERNEL_CRASH_AT"] = crash
        env["HELD_OPEN"] = str(HELD_OPEN_S)  # (for a pipeline that appends tests/_crash_runs.HELD_OPEN)
    return subprocess.run(
        [sys.executable, "-m", "kernel.run", str(tmp / "pipeline.py"), "--cores", str(cores),
         "--state-dir", str(tmp / "state"), "--epoch-interval", interval],
        env=env, capture_output=True, text=True, timeout=120,
    )


def visible_lines(directory: Path) -> list:
    lines = []
    for path in sorted(directory.glob("part-*.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines()]
    return lines


_PART = re.compile(r"^\.?part-k\d+-e(\d+)\.jsonl$")


def files_up_to(directory: Path, epoch: int) -> dict[str, tuple[int, bytes]]:
    """The part files (hidden or not) of epochs up to `epoch`, by their
    visible name: (inode, bytes). Publishing renames, so both survive it."""
    found = {}
    for path in directory.glob("*part-*.jsonl") if directory.exists() else ():
        match = _PART.match(path.name)
        if match and int(match.group(1)) <= epoch:
            found[path.name.lstrip(".")] = (path.stat().st_ino, path.read_bytes())
    return found


def newest_complete(state: Path) -> tuple[int, bool]:
    """The epoch a resumed run must restore: the store's newest complete one."""
    store = SnapshotStore(state)
    try:
        completed = store.completed()
    finally:
        store.close()
    return completed[0] if completed else (0, False)


def read_by(out: Path, run: str) -> int:
    return sum(int(path.read_text()) for path in out.glob(f"read-{run}-k*"))


def assert_it_resumed(tmp: Path, second, epoch: int, finished: bool, kept: dict, out: Path | None = None,
                      n: int = N):
    """`second` restored `epoch`: it says so, its source read only what the
    files of epochs up to it do not hold, and it left those files as they
    were (published, same inode, same bytes)."""
    out = out or tmp / "out"
    if finished:
        assert f"already ran to the end (epoch {epoch})" in second.stderr
    elif epoch:
        assert f"resuming from epoch {epoch}\n" in second.stderr
    else:
        assert "resuming" not in second.stderr and "already ran" not in second.stderr
    held = sum(len(data.splitlines()) for _, data in kept.values())
    assert read_by(out, "resumed") == n - held
    assert files_up_to(out / "records", epoch) == kept


def assert_exactly_once(out: Path, n: int = N) -> None:
    """PIPELINE's outputs for `n` records, each exactly once (a plain loop's)."""
    records = visible_lines(out / "records")
    assert_each_once(records, n)  # every record, exactly once
    sums = {k: sum(x for x in range(n) if x % 5 == k) for k in range(5)}
    assert dict(map(tuple, visible_lines(out / "sums"))) == sums
    assert len(visible_lines(out / "sums")) == 5
    expected_windows = Counter((x % 3, float(x // 100), float(x // 100 + 1)) for x in range(n))
    windows = visible_lines(out / "windows")  # [key, [start, end], count], each once
    assert Counter({(key, start, end): c for key, (start, end), c in windows}) == expected_windows
    assert len(windows) == len(expected_windows)
    hidden = [p.name for p in out.rglob(".part-*")]
    assert hidden == []


@settings(max_examples=10, deadline=None)
@example(point="snapshot", nth=2, cores=2, source="async")
@example(point="batch", nth=3, cores=1, source="async")
@given(
    point=st.sampled_from(["batch", "snapshot", "commit"]),
    nth=st.integers(1, 4),
    cores=st.sampled_from([1, 2]),
    source=st.sampled_from(["iterable", "async"]),
)
def test_a_crashed_run_resumes_and_publishes_every_record_exactly_once(
    tmp_path_factory, point, nth, cores, source
):
    tmp = tmp_path_factory.mktemp("recovery")
    (tmp / "pipeline.py").write_text(PIPELINE)
    crash = f"{point}:{nth}" + ("@1" if cores == 2 else "")
    first = run_cli(tmp, cores, crash, source)
    assert first.returncode != 0, "the crash point was never reached"
    if cores == 2:
        assert "kernel 1" in first.stderr and "SIGKILL" in first.stderr
    epoch, finished = newest_complete(tmp / "state")
    kept = files_up_to(tmp / "out" / "records", epoch)

    second = run_cli(tmp, cores, None, source, run="resumed")
    assert second.returncode == 0, second.stderr
    assert_it_resumed(tmp, second, epoch, finished, kept)
    assert_exactly_once(tmp / "out")
    final, done = newest_complete(tmp / "state")
    # the resumed run took epochs of its own (with no sleeps it is 1 past)
    assert done and (finished or final >= epoch + 2), (epoch, final)


def test_a_run_killed_after_its_third_snapshot_resumes_from_its_second_epoch(tmp_path):
    """One kernel, killed after writing epoch 3 and before marking it
    complete: epochs 1 and 2 are complete, so the rerun restores epoch 2."""
    n = 1000
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    assert run_cli(tmp_path, 1, "snapshot:3", n=n).returncode != 0
    assert newest_complete(tmp_path / "state") == (2, False)
    kept = files_up_to(tmp_path / "out" / "records", 2)
    assert kept  # epochs 1 and 2 held records

    second = run_cli(tmp_path, 1, None, run="resumed", n=n)
    assert second.returncode == 0, second.stderr
    assert_it_resumed(tmp_path, second, 2, False, kept, n=n)
    assert 0 < read_by(tmp_path / "out", "resumed") < n
    assert_exactly_once(tmp_path / "out", n)


def test_a_finished_run_is_not_run_again(tmp_path):
    n = 1000
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    assert run_cli(tmp_path, 1, None, n=n).returncode == 0
    epoch, finished = newest_complete(tmp_path / "state")
    assert finished
    kept = files_up_to(tmp_path / "out" / "records", epoch)
    again = run_cli(tmp_path, 1, None, run="resumed", n=n)
    assert again.returncode == 0
    assert_it_resumed(tmp_path, again, epoch, finished, kept, n=n)  # nothing read, nothing rewritten
    assert not list((tmp_path / "out").glob("read-resumed-*"))
    assert newest_complete(tmp_path / "state") == (epoch, True)  # nor a new epoch written
    assert_exactly_once(tmp_path / "out", n)


MANY_OUTPUTS = textwrap.dedent(
    """
    import os
    from kernel import Dataflow

    OUT = os.environ["OUT"]
    flow = Dataflow("many_outputs")
    numbers = flow.from_iterable(range(240), batch_size=10)
    for i in range(12):
        numbers.filter(lambda x, i=i: x % 12 == i).to_files(os.path.join(OUT, f"out{i}"))
    """
)


@pytest.mark.parametrize("cores", [1, 2])
def test_a_crash_while_the_final_epoch_is_published_loses_nothing(tmp_path, cores):
    """Found by a probe: the final epoch (the only one here) is marked
    complete before its files are renamed; killed after the first rename,
    the rerun said "nothing to do" and left the other files hidden for good.
    Now it publishes them (and runs nothing again)."""
    (tmp_path / "pipeline.py").write_text(MANY_OUTPUTS)
    first = run_cli(tmp_path, cores, "commit:1@0", interval="60")
    assert first.returncode != 0
    assert newest_complete(tmp_path / "state") == (1, True)
    outputs = [tmp_path / "out" / f"out{i}" for i in range(12)]
    before = {out.name: files_up_to(out, 1) for out in outputs}
    hidden = [p for out in outputs for p in out.glob(".part-k0-*")]
    assert len(hidden) == 12 // cores - 1  # kernel 0 had renamed one of its files

    again = run_cli(tmp_path, cores, None, run="resumed", interval="60")
    assert again.returncode == 0, again.stderr
    assert "already ran to the end (epoch 1)" in again.stderr
    for i, out in enumerate(outputs):
        assert sorted(visible_lines(out)) == [x for x in range(240) if x % 12 == i]
        assert not list(out.glob(".part-*"))
        assert files_up_to(out, 1) == before[out.name]  # renamed, not written again
    assert newest_complete(tmp_path / "state") == (1, True)


ENDED_ASYNC = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    OUT = os.environ["OUT"]

    async def short():  # a replayable async input of several batches, done early
        for x in range(200):
            yield x

    def slow(x):
        if os.environ["RUN"] == "first":  # the run that crashes; the one that resumes it only has to end
            time.sleep(0.002)
        return x

    flow = Dataflow("ended_async")
    flow.from_async_iterable(short, batch_size=25).to_files(os.path.join(OUT, "a"))
    flow.from_iterable(range(1000), batch_size=10).map(slow).to_files(os.path.join(OUT, "b"))
    """
)


def test_a_source_that_had_ended_stays_ended_in_the_resumed_run(tmp_path):
    """Found in review: the resumed run re-opened the ended async source,
    whose reader read its input again and waited forever to be polled."""
    (tmp_path / "pipeline.py").write_text(ENDED_ASYNC)
    first = run_cli(tmp_path, 1, "batch:60")  # well after the async source ended
    assert first.returncode != 0
    epoch, _ = newest_complete(tmp_path / "state")
    kept = {name: files_up_to(tmp_path / "out" / name, epoch) for name in "ab"}
    assert sum(len(data.splitlines()) for _, data in kept["a"].values()) == 200  # it had ended
    second = run_cli(tmp_path, 1, None, run="resumed")
    assert second.returncode == 0, second.stderr
    assert f"resuming from epoch {epoch}\n" in second.stderr
    assert {name: files_up_to(tmp_path / "out" / name, epoch) for name in "ab"} == kept
    assert_each_once(visible_lines(tmp_path / "out" / "a"), 200)
    assert_each_once(visible_lines(tmp_path / "out" / "b"), 1000)


TIMERS = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow, Operator

    OUT = os.environ["OUT"]
    """
) + COUNT_READ + textwrap.dedent(
    """

    class Remind(Operator):
        def on_batch(self, port, batch):
            for x in batch:
                self.schedule(1e12, {"record": x})  # payloads that cannot be ordered
            time.sleep(0.005)

        def on_timer(self, when, data):
            self.emit([data["record"]])

    flow = Dataflow("timers")
    (flow.from_iterable(range(300), batch_size=5, timestamp=lambda x: float(x))
         .apply(CountRead).apply(Remind).to_files(os.path.join(OUT, "r")))
    """
)


def test_restored_timers_keep_their_order_with_new_ones(tmp_path):
    """Found in review: restored timers kept the crashed process's sequence
    numbers, so a new timer could tie with one and compare the payloads."""
    (tmp_path / "pipeline.py").write_text(TIMERS)
    first = run_cli(tmp_path, 1, "snapshot:5")
    assert first.returncode != 0
    second = run_cli(tmp_path, 1, None, run="resumed")
    assert second.returncode == 0, second.stderr
    assert "resuming from epoch 4\n" in second.stderr
    assert 0 < read_by(tmp_path / "out", "resumed") < 300  # the rest came from restored timers
    assert visible_lines(tmp_path / "out" / "r") == list(range(300))  # fired in the order set


_RECOVERY_PIPELINE = """
import os, time
import kernel.operators.windows._pass_on as w
from kernel import Dataflow
from operators import Sliding, Tumbling

# the partial halves pass on from the start and switch back every batch
w._PASS_ON_ABOVE, w._START_PASSING, w._MEASURE_AT_LEAST, w._PASSED_BEFORE_PROBE = -1.0, True, 0, 1
OUT = os.environ["OUT"]
""" + COUNT_READ + """

EVERY = 100 if os.environ["RUN"] == "resumed" else 20  # as PIPELINE's


def slow(x):
    if x % EVERY in (0, 1):
        time.sleep(0.004)  # many epochs
    return x

flow = Dataflow("recovery")
numbers = flow.from_iterable(range(3000), batch_size=25, timestamp=lambda x: x / 100)
numbers = numbers.apply(CountRead).map(slow)
numbers.key_by(lambda x: x % 7).window(Tumbling(1.0)).count().to_files(os.path.join(OUT, "tumbling"))
numbers.key_by(lambda x: x % 7).window(Sliding(2.0, 0.5)).sum().to_files(os.path.join(OUT, "sliding"))
"""


def test_a_crash_while_the_combiner_passes_records_on_resumes_to_the_right_windows(tmp_path):
    """Held up: the recovery tests' combiner never passes on (3 keys, 100
    events a window); here it does, and switches back every batch, and
    kernel 1 is killed after its third snapshot."""
    (tmp_path / "pipeline.py").write_text(_RECOVERY_PIPELINE)

    def run_cli(crash, run="first"):
        env = dict(os.environ, OUT=str(tmp_path / "out"), RUN=run)
        env.pop("KERNEL_CRASH_AT", None)
        if crash:
            env["KERNEL_CRASH_AT"] = crash
        return subprocess.run(
            [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--cores", "2",
             "--state-dir", str(tmp_path / "state"), "--epoch-interval", "0.02"],
            env=env, capture_output=True, text=True, timeout=120)

    assert run_cli("committed:1@1").returncode != 0
    epoch, _ = newest_complete(tmp_path / "state")
    assert epoch >= 1
    second = run_cli(None, run="resumed")
    assert second.returncode == 0, second.stderr
    assert f"resuming from epoch {epoch}\n" in second.stderr
    assert 0 < read_by(tmp_path / "out", "resumed") < 3000

    def visible(name):  # (key, start, end, result), each line once
        lines = [json.loads(line) for path in sorted((tmp_path / "out" / name).glob("part-*.jsonl"))
                 for line in path.read_text().splitlines()]
        return [(key, start, end, result) for key, (start, end), result in lines]

    tumbling = Counter((x % 7, float(x // 100), float(x // 100 + 1)) for x in range(3000))
    assert sorted(visible("tumbling")) == sorted((*kw, n) for kw, n in tumbling.items())
    sliding = Counter()
    for x in range(3000):
        t = x / 100
        for j in range(int(t // 0.5) - 3, int(t // 0.5) + 1):
            if j * 0.5 <= t < j * 0.5 + 2.0:
                sliding[x % 7, j * 0.5, j * 0.5 + 2.0] += x
    assert sorted(visible("sliding")) == sorted((*kw, s) for kw, s in sliding.items())


FALLBACK = textwrap.dedent(
    """
    import asyncio, os
    from kernel import Dataflow

    N = int(os.environ["N"])
    OUT = os.environ["OUT"]
    """
) + COUNT_READ + textwrap.dedent(
    """
    async def numbers():
        for x in range(N):
            if x == N - 1:  # epochs pass while the source waits for its last record
                await asyncio.sleep(0.15)
            yield x

    flow = Dataflow("fallback")
    records = flow.from_async_iterable(numbers, batch_size=10).apply(CountRead)
    records.to_files(os.path.join(OUT, "records"))
    records.key_by(lambda x: x % 5).sum().to_files(os.path.join(OUT, "sums"))
    """
)


def corrupt_blob(state: Path, epoch: int, kernel: int) -> None:
    db = sqlite3.connect(state / "snapshots.sqlite")
    db.execute("UPDATE snapshots SET blob = substr(blob, 1, length(blob) / 2) WHERE epoch = ? AND kernel = ?",
               (epoch, kernel))  # torn: the first half of it
    db.commit()
    db.close()


def drop_blob(state: Path, epoch: int, kernel: int) -> None:
    db = sqlite3.connect(state / "snapshots.sqlite")
    db.execute("DELETE FROM snapshots WHERE epoch = ? AND kernel = ?", (epoch, kernel))  # lost
    db.commit()
    db.close()


@pytest.mark.parametrize(("damage", "said"), [
    (corrupt_blob, "fails its checksum"),
    # (a snapshot missing from a complete epoch is a damaged one as well)
    (drop_blob, "has no snapshot of kernel 0 at its end (final)"),
])
@pytest.mark.parametrize("cores", [1, 2])
def test_a_run_that_falls_back_from_a_corrupt_snapshot_publishes_every_record_once(tmp_path, cores, damage,
                                                                                    said):
    """Found by a probe: resumed from the epoch before a corrupt newest
    one, the earlier run's visible files of the replayed epoch stayed, and
    where the replay wrote nothing to that epoch their records came out
    twice. Here the finished run's final snapshot (the newest) is torn; the
    run before it restores the last epoch taken while the source waited for
    its last record, and the replay passes epochs during that wait, so it
    writes the last record and the sums under a later epoch's name."""
    n = 100
    (tmp_path / "pipeline.py").write_text(FALLBACK)
    first = run_cli(tmp_path, cores, None, run="first", n=n)
    assert first.returncode == 0, first.stderr
    store = SnapshotStore(tmp_path / "state")
    completed = store.completed()
    store.close()
    (final, _), (previous, _) = completed
    assert completed == [(final, True), (previous, False)] and previous >= 2
    damage(tmp_path / "state", FINAL, 0)
    kept = files_up_to(tmp_path / "out" / "records", previous)

    second = run_cli(tmp_path, cores, None, run="resumed", n=n)
    assert second.returncode == 0, second.stderr
    assert f"{said}; falling back to the previous complete epoch" in second.stderr
    assert f"resuming from epoch {previous}\n" in second.stderr
    # what the files of the restored epoch do not hold, read again: the last
    # record (on 2 kernels, unless its kernel had ended before that epoch)
    assert read_by(tmp_path / "out", "resumed") == n - sum(len(d.splitlines()) for _, d in kept.values())
    assert files_up_to(tmp_path / "out" / "records", previous) == kept
    assert_each_once(visible_lines(tmp_path / "out" / "records"), n)
    sums = visible_lines(tmp_path / "out" / "sums")
    assert sorted(map(tuple, sums)) == [(k, sum(x for x in range(n) if x % 5 == k)) for k in range(5)]
    assert not list((tmp_path / "out").rglob(".part-*"))


def test_a_moved_output_directory_resumes(tmp_path):
    """The state is the flow's, not its paths': a crashed run's output
    directory moved elsewhere (and the new path passed) resumes there."""
    n = 1000
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    assert run_cli(tmp_path, 1, "snapshot:3", out=tmp_path / "old", n=n).returncode != 0
    shutil.move(tmp_path / "old", tmp_path / "new")
    kept = files_up_to(tmp_path / "new" / "records", 2)

    second = run_cli(tmp_path, 1, None, run="resumed", out=tmp_path / "new", n=n)
    assert second.returncode == 0, second.stderr
    assert_it_resumed(tmp_path, second, 2, False, kept, out=tmp_path / "new", n=n)
    assert_exactly_once(tmp_path / "new", n)


def test_a_failed_run_on_one_kernel_writes_nothing_after_it_returns(tmp_path, capfd):
    """Found in review: a one-kernel run with a state_dir that failed left its
    snapshot writer running: writes still in flight finished after run()
    returned (marking epochs complete behind the caller's back) and told a
    closed loop about it ("Event loop is closed" tracebacks on stderr)."""
    import threading
    import time

    from kernel import Dataflow, OperatorError, run

    def slow_until_broken(n):
        if n == 600:
            raise ValueError("broken record")
        time.sleep(0.0001)  # spreads the run over many 1 ms epochs
        return n

    flow = Dataflow("fails")
    flow.from_iterable(range(1_000), batch_size=10).map(slow_until_broken).key_by(
        lambda n: n % 3).count().collect()
    with pytest.raises(OperatorError, match="broken record"):
        run(flow, state_dir=tmp_path / "state", epoch_interval=0.001)
    assert [t.name for t in threading.enumerate() if t.name.startswith("snapshot-writer")] == []
    store = SnapshotStore(tmp_path / "state")
    try:
        completed = store.completed()
        assert completed and completed[0][0] > 1  # it did snapshot before it failed
        time.sleep(0.05)  # a write still in flight would land now
        assert store.completed() == completed
    finally:
        store.close()
    assert "Event loop is closed" not in capfd.readouterr().err


STATE_OF_A_CLASS = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    if os.environ["RUN"] == "renamed":
        class Renamed:
            def __init__(self):
                self.n = 0
        make = Renamed
    else:
        import threading

        class Stop(BaseException):
            pass

        class Tally:
            def __init__(self):
                self.n = 0
                if os.environ.get("LOCKED"):
                    self.lock = threading.Lock()  # cannot be pickled

            if os.environ["RUN"] == "refusing":
                def __setstate__(self, state):
                    raise Stop("no state")
        make = Tally

    def paced(n):
        if n % 20 in (0, 1):  # (on both kernels: kernel k of 2 reads record i where i % 2 == k)
            # a kernel's batch of 20 takes 4 ms at the source: epochs (5 ms) between; a
            # kernel takes epoch n once n - 2 is complete, 10 to 30 ms apart under load
            time.sleep(0.002)
        return n

    def tally(state, n):
        state = state or make()
        state.n += 1
        return state, state.n

    flow = Dataflow("tallies")
    numbers = flow.from_iterable(range(3_000), batch_size=20).map(paced)
    numbers.key_by(lambda n: n % 3).stateful_map(tally).to_files(os.environ["OUT"])
    """
)


_spec = importlib.util.spec_from_file_location(
    "_crash_runs", Path(__file__).resolve().parents[1] / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)


def run_tallies(tmp: Path, cores: int, run: str, crash: str | None = None, **env):
    return _crash_runs.run_cli(tmp, cores, crash, epoch_interval="0.005", OUT=tmp / "out", RUN=run, **env)


@pytest.mark.parametrize("cores", [1, 2])
def test_state_that_does_not_pickle_names_its_step_and_says_state_must_pickle(tmp_path, cores):
    """Found by a review: the TypeError of a lock in stateful_map's state was
    blamed on the step's `on_watermark`, with no word of snapshots."""
    (tmp_path / "pipeline.py").write_text(STATE_OF_A_CLASS)
    failed = run_tallies(tmp_path, cores, "first", LOCKED="1")
    assert failed.returncode == 1
    error = next(line for line in failed.stderr.splitlines() if line.startswith("error: "))
    assert error.endswith("operator 'stateful_map(tally) (step 3)': function 'pickle.dumps' raised "
                          "TypeError: cannot pickle '_thread.lock' object"), failed.stderr
    assert "every step's state is pickled at each epoch" in failed.stderr


def _crashed_and_resumed_as(tmp_path, cores: int, resumed_on: int, mode: str):
    """STATE_OF_A_CLASS crashed on `cores` kernels once its state is in a
    snapshot, then resumed on `resumed_on` as `mode`, failing: the resumed
    run and its `error: ` line."""
    (tmp_path / "pipeline.py").write_text(STATE_OF_A_CLASS)
    # (~30 epochs a kernel: state in the 4th)
    crash = "committed:4@1" if cores == 2 else "snapshot:5"
    first = run_tallies(tmp_path, cores, "first", crash)
    assert first.returncode != 0, "the crash point was never reached"
    resumed = run_tallies(tmp_path, resumed_on, mode)
    assert resumed.returncode == 1, resumed.stderr
    return resumed, next(line for line in resumed.stderr.splitlines() if line.startswith("error: "))


@pytest.mark.parametrize("cores", [1, 2])
def test_state_whose_unpickling_raises_a_base_exception_names_its_step(tmp_path, cores):
    """A `__setstate__` that raises a BaseException that is not an
    Exception went past the step's `except Exception`: the resumed run
    failed with the bare Stop, naming no step."""
    resumed, error = _crashed_and_resumed_as(tmp_path, cores, cores, "refusing")
    assert error.endswith("operator 'stateful_map(tally) (step 3)': function 'pickle.loads' raised "
                          "Stop: no state"), resumed.stderr


@pytest.mark.parametrize(("cores", "resumed_on"), [(1, 1), (2, 2), (2, 1)])
def test_a_snapshot_holding_a_class_renamed_since_names_its_step_and_the_way_out(tmp_path, cores, resumed_on):
    """Found by a review: a state of a class the pipeline file no longer
    has under that name was a bare traceback (1 kernel) or "kernel 0
    failed: AttributeError" naming no step (2). Resumed on another number
    of kernels, every old kernel's snapshot is read by each new one."""
    resumed, error = _crashed_and_resumed_as(tmp_path, cores, resumed_on, "renamed")
    assert error.endswith("operator 'stateful_map(tally) (step 3)': function 'pickle.loads' raised "
                          "AttributeError: Can't get attribute 'Tally' on <module '__kernel_pipeline__' "
                          f"from '{tmp_path / 'pipeline.py'}'>"), resumed.stderr
    assert "a class renamed or moved since: give it back its name" in resumed.stderr
    assert run_tallies(tmp_path, resumed_on, "again").returncode == 0  # its name back: it resumes
