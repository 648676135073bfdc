"""The snapshot store and keyed state: checksums, fallback to the previous
complete epoch, another flow's state_dir, a full disk."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel.operators import SNAPSHOT_LAYOUT

from kernel import Dataflow, KernelError, Operator, run
from kernel._facade import flow_fingerprint
from operators import Sliding, Tumbling
from state import (
    CorruptSnapshot,
    SnapshotStore,
    StateError,
    ValueState,
    list_state,
    map_state,
    value_state,
)


def store_with_epochs(tmp_path, epochs=(1, 2), kernels=2) -> SnapshotStore:
    store = SnapshotStore(tmp_path)
    store.claim("flow-a", kernels, SNAPSHOT_LAYOUT)
    for epoch in epochs:
        for kernel in range(kernels):
            store.write(epoch, kernel, f"epoch {epoch} kernel {kernel}".encode())
        store.mark_complete(epoch)
    return store


def damage(store: SnapshotStore, epoch: int, kernel: int, blob: bytes) -> None:
    db = sqlite3.connect(store.path)
    db.execute("UPDATE snapshots SET blob = ? WHERE epoch = ? AND kernel = ?", (blob, epoch, kernel))
    db.commit()
    db.close()


def test_the_newest_complete_epoch_is_restored(tmp_path):
    store = store_with_epochs(tmp_path)
    store.write(3, 0, b"epoch 3 kernel 0")  # epoch 3 never completed
    assert store.latest(2) == (2, False, [b"epoch 2 kernel 0", b"epoch 2 kernel 1"])


@pytest.mark.parametrize("how", ["flipped", "truncated", "empty"])
def test_a_corrupt_snapshot_falls_back_to_the_previous_epoch_with_a_warning(tmp_path, caplog, how):
    store = store_with_epochs(tmp_path)
    good = b"epoch 2 kernel 1"
    bad = {"flipped": b"epoch 2 kernel 9", "truncated": good[:7], "empty": b""}[how]
    damage(store, 2, 1, bad)
    with caplog.at_level(logging.WARNING, logger="kernel.state"):
        assert store.latest(2) == (1, False, [b"epoch 1 kernel 0", b"epoch 1 kernel 1"])
    assert "fails its checksum" in caplog.text and "previous complete epoch" in caplog.text
    with pytest.raises(CorruptSnapshot):
        store.read(2, 1)


def _flow_on_the_store(tmp_path, epochs, kernels=2):
    """A flow, and its state_dir holding these complete epochs (the store
    claimed with the flow's own fingerprint, as a run would have)."""
    from kernel._facade import Snapshots

    flow = Dataflow("f")
    flow.from_iterable([1, 2]).collect()
    store = SnapshotStore(tmp_path)
    store.claim(flow_fingerprint(flow), kernels, SNAPSHOT_LAYOUT)
    for epoch in epochs:
        for kernel in range(kernels):
            store.write(epoch, kernel, f"epoch {epoch} kernel {kernel}".encode())
        store.mark_complete(epoch)
    return flow, store, lambda: Snapshots(flow, tmp_path, 1.0, kernels)


def test_a_run_resumed_past_a_corrupt_epoch_never_restores_that_epochs_other_snapshots(tmp_path):
    """Found by a review: epoch 3 was complete and kernel 0's snapshot of
    it torn, so the run resumed from epoch 2; its kernel 0 wrote epoch 3
    anew and the run crashed before kernel 1 did. The old mark "epoch 3
    complete" stood, so the next run restored kernel 0's new snapshot with
    kernel 1's old one, two different cuts (records lost or published
    twice). Resuming from 2 drops what the store held past it."""
    _flow, store, resumed = _flow_on_the_store(tmp_path, (1, 2, 3))
    damage(store, 3, 0, b"torn")
    first = resumed()
    assert first.epoch == 2 and first.blobs == [b"epoch 2 kernel 0", b"epoch 2 kernel 1"]
    first.store.write(3, 0, b"the resumed run's epoch 3, kernel 0")  # then it crashed
    first.store.close()
    again = resumed()
    assert again.epoch == 2 and again.blobs == [b"epoch 2 kernel 0", b"epoch 2 kernel 1"]
    assert again.store.completed() == [(2, False)]  # (epoch 1 went when 3 was marked)


def test_a_run_started_afresh_past_corrupt_epochs_keeps_its_own(tmp_path, caplog):
    """Both kept epochs torn: the run starts afresh, and its own epochs
    are the ones kept and resumed (the old marks, numbered higher, had
    stayed the newest two: each new mark deleted the new run's epochs and
    every later run started afresh again)."""
    _flow, store, resumed = _flow_on_the_store(tmp_path, (7, 8))
    damage(store, 7, 1, b"torn")
    damage(store, 8, 0, b"torn")
    with caplog.at_level(logging.WARNING, logger="kernel.state"):
        fresh = resumed()
    assert fresh.epoch == 0 and fresh.blobs is None
    assert caplog.text.count("falling back to the previous complete epoch") == 2
    assert "no complete epoch reads back intact; starting afresh" in caplog.text
    for epoch in (1, 2):
        for kernel in range(2):
            fresh.store.write(epoch, kernel, f"new epoch {epoch} kernel {kernel}".encode())
        fresh.store.mark_complete(epoch)
    fresh.store.close()
    again = resumed()
    assert again.epoch == 2 and again.blobs == [b"new epoch 2 kernel 0", b"new epoch 2 kernel 1"]


def test_only_the_two_newest_complete_epochs_are_kept(tmp_path):
    store = store_with_epochs(tmp_path, epochs=(1, 2, 3, 4))
    assert [epoch for epoch, _ in store.completed()] == [4, 3]
    with pytest.raises(CorruptSnapshot, match="no snapshot"):
        store.read(2, 0)


def test_a_state_dir_of_another_flow_or_more_kernels_than_key_groups_is_refused(tmp_path):
    """Another number of kernels is a rescaled resume, up to the key groups
    fixed at the first run (128 for 2 kernels); the store keeps each
    epoch's own kernel count."""
    store_with_epochs(tmp_path)
    with pytest.raises(StateError, match="another flow"):
        SnapshotStore(tmp_path).claim("flow-b", 2, SNAPSHOT_LAYOUT)
    with pytest.raises(StateError, match=r"has 128 key groups .* and this run has 129 kernels"):
        SnapshotStore(tmp_path).claim("flow-a", 129, SNAPSHOT_LAYOUT)
    rescaled = SnapshotStore(tmp_path)
    rescaled.claim("flow-a", 3, SNAPSHOT_LAYOUT)
    assert (rescaled.kernels, rescaled.key_groups) == (3, 128)
    epoch, _, blobs = rescaled.latest()
    assert (epoch, len(blobs)) == (2, 2)  # the old epoch, with its 2 kernels' snapshots


def test_a_state_dir_in_another_snapshot_format_is_refused(tmp_path):
    """A state_dir written before the operators' snapshots changed layout (no
    format row, as format 1 stores had) is refused, not misread."""
    store_with_epochs(tmp_path)
    old = SnapshotStore(tmp_path)
    old._write("DELETE FROM meta WHERE key = ?", ("format",))
    old.close()
    with pytest.raises(StateError, match="format 1 and this version reads format 5"):
        SnapshotStore(tmp_path).claim("flow-a", 2, SNAPSHOT_LAYOUT)
    written_by_the_previous_version = SnapshotStore(tmp_path)
    written_by_the_previous_version._write("INSERT INTO meta (key, value) VALUES (?, ?)", ("format", "4"))
    with pytest.raises(StateError, match="format 4 and this version reads format 5"):
        SnapshotStore(tmp_path).claim("flow-a", 2, SNAPSHOT_LAYOUT)


@pytest.mark.parametrize(("key", "value", "why"), [("key_groups", "1(8", "not a number"),
                                                    ("key_groups", "138", "not a power of two"),
                                                    ("kernels", "", "not a number")])
def test_a_meta_row_damaged_past_sqlites_check_is_a_state_error(tmp_path, key, value, why):
    """Found by a review: one byte flipped in a digit of `key_groups` passes
    `PRAGMA quick_check`, and came out as a bare ValueError (exit 2, as a
    usage error) or, from a kernel, as "key groups must be a power of two"."""
    flow, store, resumed = _flow_on_the_store(tmp_path, (1, 2))
    store._write("UPDATE meta SET value = ? WHERE key = ?", (value, key))
    store.close()
    with pytest.raises(StateError, match=rf"is damaged: its {key} reads '{re.escape(value)}', {why}; move"):
        resumed()
    with pytest.raises(StateError, match=rf"is damaged: its {key} reads"):
        run(flow, state_dir=tmp_path, cores=2)


async def _counted_to(n):
    for i in range(n):
        yield i


def test_the_fingerprint_is_the_flows_shape_not_its_paths_functions_or_names():
    """What makes a state_dir "another flow's": the steps' kinds and how
    they connect (and a window's size, which its state depends on), never
    a to_files directory, a function or a step's name."""

    def fingerprint(out="a", fn=abs, name=None, window=None, flow_name="f", extra=False,
                    source="iterable", aggregate="count"):
        window = window or Tumbling(1.0)
        flow = Dataflow(flow_name)
        if source == "iterable":
            numbers = flow.from_iterable(range(9), timestamp=float)
        else:
            numbers = flow.from_async_iterable(_counted_to(9), timestamp=float)
        numbers = numbers.map(fn, name=name)
        if extra:
            numbers = numbers.filter(bool)
        windows = numbers.key_by(fn).window(window)
        getattr(windows, aggregate)().to_files(out)
        return flow_fingerprint(flow)

    same = fingerprint()
    assert fingerprint(out="elsewhere/b") == same
    assert fingerprint(fn=lambda x: x) == same
    assert fingerprint(name="renamed") == same
    shapes = [fingerprint(window=Tumbling(2.0)), fingerprint(window=Sliding(1.0, 0.5)),
              fingerprint(aggregate="sum"), fingerprint(extra=True), fingerprint(source="async"),
              fingerprint(flow_name="g")]
    assert len({same, *shapes}) == len(shapes) + 1

    def joined(swap: bool):
        flow = Dataflow("f")
        a, b = flow.from_iterable([1]), flow.from_iterable([2], timestamp=float)
        first, second = (b, a) if swap else (a, b)
        first.union(second).collect()
        return flow_fingerprint(flow)

    assert joined(False) != joined(True)  # the same steps, connected otherwise


class _Doubles(Operator):
    def on_batch(self, port, batch):
        self.emit([x * 2 for x in batch])


class _Halves(Operator):
    def on_batch(self, port, batch):
        self.emit([x // 2 for x in batch])


def test_the_fingerprint_tells_apply_steps_of_two_operator_classes_apart():
    """An `apply()` step's kind is its operator class's, through the
    wrapper that names a failing factory's step: snapshots of a flow whose
    step was another class are not taken for this one's."""

    def fingerprint(factory):
        flow = Dataflow("f")
        flow.from_iterable([1]).apply(factory).collect()
        return flow_fingerprint(flow)

    assert fingerprint(_Doubles) == fingerprint(_Doubles)
    assert fingerprint(_Doubles) != fingerprint(_Halves)


@pytest.mark.parametrize("where", ["a file", "under a file", "cannot be created"])
def test_a_state_dir_that_is_no_directory_is_a_clear_error(tmp_path, where):
    """Found by a review: a bare NotADirectoryError (or OSError) and its
    traceback, from `run` and from the command line."""
    (tmp_path / "afile").write_text("")
    state_dir = {"a file": tmp_path / "afile", "under a file": tmp_path / "afile" / "state",
                 "cannot be created": f"/proc/kernel-state-{uuid.uuid4().hex}"}[where]
    flow = Dataflow("f")
    flow.from_iterable([1, 2]).collect()
    with pytest.raises(StateError, match=rf"state_dir '{state_dir}' cannot be used as a directory: "):
        run(flow, state_dir=state_dir)
    if where == "a file":
        (tmp_path / "pipeline.py").write_text(
            "from kernel import Dataflow\nflow = Dataflow('f')\nflow.from_iterable([1, 2]).collect()\n")
        cli = subprocess.run([sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"),
                              "--state-dir", str(state_dir)], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 1
        assert cli.stderr.strip().splitlines()[-1].startswith(
            f"error: state_dir '{state_dir}' cannot be used as a directory: Not a directory"), cli.stderr


# a process of this root user without the capabilities that let it write any file
# (test_session34_files); another user's chmod does it alone
AS_PLAIN_OWNER = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                  "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


def _can_mount_read_only(where) -> bool:
    """Whether this process may mount a read-only tmpfs in a mount namespace of its own."""
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o ro tmpfs '{where}'"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.parametrize("what", ["directory", "directory of a store", "store file", "unreadable store file",
                                  "read-only file system"])
def test_a_state_dir_this_run_cannot_write_is_said_at_its_start(tmp_path, what):
    """Found by a review: a read-only state_dir failed with SQLite's words,
    "cannot create snapshots.sqlite: unable to open database file", or,
    with a store from an earlier run, "attempt to write a readonly
    database", which did not say what was read-only."""
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text("from kernel import Dataflow\n"
                        "flow = Dataflow('f')\nflow.from_iterable([1, 2]).print()\n")
    state_dir = tmp_path / "state"
    command = [sys.executable, "-m", "kernel.run", str(pipeline), "--state-dir", str(state_dir)]
    if "store" in what:  # a store from an earlier run
        earlier = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert earlier.returncode == 0 and earlier.stdout == "1\n2\n", earlier.stderr
    else:
        state_dir.mkdir()
    if what == "store file":  # the directory writable, the store's files not
        for path in state_dir.glob("snapshots.sqlite*"):
            path.chmod(0o444)
        said = "snapshots.sqlite is read-only (no permission to write it)"
    elif what == "unreadable store file":
        (state_dir / "snapshots.sqlite").chmod(0o200)
        said = "snapshots.sqlite is unreadable (no permission to read it)"
    elif what == "read-only file system":  # an empty one mounted there, in a mount namespace of the run's own
        if not _can_mount_read_only(state_dir):
            pytest.skip("no mount namespace of its own here (unshare -m, mount)")
        mounted = f"mount -t tmpfs -o ro tmpfs '{state_dir}' && exec \"$0\" \"$@\""
        command = ["unshare", "-m", "sh", "-c", mounted, *command]
        said = "the directory is on a read-only file system"
    else:
        state_dir.chmod(0o555)
        said = "the directory is read-only (no permission to make files in it)"
    before = sorted(state_dir.iterdir())
    try:
        cli = subprocess.run(AS_PLAIN_OWNER + command, capture_output=True, text=True, timeout=60)
    finally:
        state_dir.chmod(0o755)
    assert cli.returncode == 1 and cli.stdout == ""
    assert cli.stderr.splitlines() == [
        f"error: state_dir '{state_dir}': {said}, so this run cannot write its snapshots there; give "
        "the run a directory it may write"], cli.stderr
    assert sorted(state_dir.iterdir()) == before


def test_run_refuses_a_state_dir_written_by_another_flow(tmp_path):
    first = Dataflow("one")
    first.from_iterable([1, 2]).map(str).collect()
    run(first, state_dir=tmp_path)
    other = Dataflow("two")
    other.from_iterable([1, 2]).filter(bool).collect()
    with pytest.raises(StateError, match="another flow"):
        run(other, state_dir=tmp_path)


def test_a_finished_run_rerun_on_another_number_of_kernels_adds_nothing(tmp_path):
    """Through run(cores=) and the command line's --cores, not only the
    store: a state_dir written on 1 kernel (2) is taken by a run on 2 (1),
    which finds the flow finished and says so (rescaled resumes of runs cut
    short: tests/state/test_rescale.py)."""
    counted = Dataflow("counted")
    counted.from_iterable(range(10)).key_by(lambda x: x % 3).count().collect()
    run(counted, state_dir=tmp_path / "api")
    run(counted, state_dir=tmp_path / "api", cores=2)

    (tmp_path / "pipeline.py").write_text(
        "from kernel import Dataflow\n"
        "flow = Dataflow('counted')\n"
        "flow.from_iterable(range(10)).key_by(lambda x: x % 3).count().sink(print)\n")

    def cli(cores: int):
        return subprocess.run(
            [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--cores", str(cores),
             "--state-dir", str(tmp_path / "cli")], capture_output=True, text=True, timeout=60)

    first = cli(2)
    assert first.returncode == 0, first.stderr
    # (two kernel processes print: one write per record, but their newlines may interleave)
    assert sorted(re.findall(r"\(\d+, \d+\)", first.stdout)) == ["(0, 4)", "(1, 3)", "(2, 3)"]
    again = cli(1)
    assert again.returncode == 0, again.stderr
    assert again.stdout == ""
    assert "epoch 1 was written by 2 kernels; this run has 1" in again.stderr
    assert "this flow already ran to the end" in again.stderr


def root_page(path, table: str) -> tuple[int, int]:
    """The number of `table`'s first page in the database file, and the page size."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the file itself
    (page,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()
    (size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    return page, size


@pytest.mark.parametrize("table", ["meta", "complete", "snapshots"])
def test_a_corrupted_page_of_the_store_is_a_clear_error(tmp_path, table):
    """Found by a probe: a damaged page gave a raw sqlite3.DatabaseError
    traceback. Any table's first page overwritten: a StateError that names
    the state_dir and says what to do."""
    flow = Dataflow("damaged")
    flow.from_iterable(range(50), batch_size=5).key_by(lambda x: x % 3).sum().collect()
    state = tmp_path / "state"
    run(flow, state_dir=state, epoch_interval=0.001)
    page, size = root_page(state / "snapshots.sqlite", table)
    with open(state / "snapshots.sqlite", "r+b") as f:
        f.seek((page - 1) * size)
        f.write(bytes(range(256)) * (size // 256))
    with pytest.raises(StateError) as info:
        run(flow, state_dir=state)
    message = str(info.value)
    assert message.startswith(f"state_dir {str(state)!r}: snapshots.sqlite is damaged (")
    assert "move the state_dir aside to run this flow afresh" in message


def test_a_page_with_many_damaged_cells_is_still_a_one_line_error(tmp_path):
    """SQLite reports every damaged cell of a page, a line each, in one
    result: the error names the first and counts the others."""
    store = store_with_epochs(tmp_path, epochs=range(1, 4), kernels=10)
    store.close()
    page, size = root_page(store.path, "snapshots")
    with open(store.path, "r+b") as f:
        f.seek((page - 1) * size + size // 2)  # the cells at the end of the page, zeroed
        f.write(bytes(size // 2))
    with pytest.raises(StateError) as info:
        SnapshotStore(tmp_path).check_intact()
    message = str(info.value)
    assert "\n" not in message
    first_and_count = r"is damaged \(On tree page \d+ cell \d+: [^()]+ and \d\d+ more problems\)"
    assert re.search(first_and_count, message), message


def test_a_corrupted_store_is_one_clear_line_from_the_command_line(tmp_path):
    (tmp_path / "pipeline.py").write_text(
        "from kernel import Dataflow\n"
        "flow = Dataflow('damaged')\n"
        "flow.from_iterable(range(50), batch_size=5).key_by(lambda x: x % 3).sum().collect()\n")

    def cli():
        return subprocess.run(
            [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--cores", "2",
             "--state-dir", str(tmp_path / "state"), "--epoch-interval", "0.001"],
            capture_output=True, text=True, timeout=60)

    assert cli().returncode == 0
    page, size = root_page(tmp_path / "state" / "snapshots.sqlite", "complete")
    with open(tmp_path / "state" / "snapshots.sqlite", "r+b") as f:
        f.seek((page - 1) * size + size // 2)  # half a page, in the middle of the file
        f.write(b"\xff" * (size // 2))
    damaged = cli()
    assert damaged.returncode == 1
    # the error is one line; a loaded machine may add the kernels' own
    # warnings (a stall: "[kernel N] ..."), but no traceback
    [line] = [line for line in damaged.stderr.splitlines() if not line.startswith("[kernel ")]
    assert line.startswith(f"error: state_dir {str(tmp_path / 'state')!r}: snapshots.sqlite is damaged (")


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.one_of(st.text(max_size=5), st.integers()), st.integers(), max_size=20))
def test_keyed_state_snapshots_are_copies_and_restore_in_place(data):
    class Holder(Operator):
        pass

    op = Holder()
    values, maps, lists = value_state(op, "v"), map_state(op, "m"), list_state(op, "l")
    values.update(data)
    for key, number in data.items():
        maps.entry(key)["n"] = number
        lists.append(key, number)
    snapshot = op.on_epoch(1)
    values.clear()
    for inner in maps.values():
        inner["n"] = "changed"
    held = values  # restore fills the same objects the operator holds
    op.restore(snapshot)
    assert held is op.keyed_states["v"] and dict(values) == data
    assert {k: v["n"] for k, v in maps.items()} == data
    assert {k: v for k, v in lists.items()} == {k: [n] for k, n in data.items()}
    assert isinstance(values, ValueState)


def test_two_states_of_one_name_are_refused():
    op = Operator()
    value_state(op, "x")
    with pytest.raises(ValueError, match="a state named 'x' exists"):
        map_state(op, "x")


def test_a_full_disk_while_snapshotting_is_a_clear_error_and_the_run_resumes_from_the_previous_epoch(
    tiny_disk, caplog
):
    """The state grows every epoch (a key per record) until a snapshot no
    longer fits: the run ends with an error that says so. Given room again,
    the same run resumes from the last epoch that was complete: it reads
    only the records after that epoch's position, and counts every key once."""
    import time

    read = []
    slowly = [True]

    def slow(x):
        read.append(x)
        if slowly[0] and x % 200 == 0:
            time.sleep(0.01)
        return x

    flow = Dataflow("growing")
    keys = flow.from_iterable(range(60_000), batch_size=200).map(slow).key_by(lambda x: f"key-{x:08d}")
    counts = keys.count().collect()
    with pytest.raises(KernelError, match="disk is full") as info:
        run(flow, state_dir=tiny_disk / "state", epoch_interval=0.02)
    assert "previous complete epoch is intact" in str(info.value)
    store = SnapshotStore(tiny_disk / "state")
    epoch, finished, _ = store.latest(1)
    store.close()
    assert epoch >= 1 and not finished

    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    read.clear()
    slowly[0] = False
    with caplog.at_level(logging.WARNING, logger="kernel"):
        run(flow, state_dir=tiny_disk / "state", epoch_interval=1.0)
    assert f"resuming from epoch {epoch}" in caplog.text
    assert 0 < read[0] and read == list(range(read[0], 60_000))  # from the snapshot's position on
    assert sorted(counts.items) == [(f"key-{x:08d}", 1) for x in range(60_000)]


def test_without_a_state_dir_files_appear_at_the_end_and_a_crashed_runs_leftovers_go(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".part-k0-e00000001.jsonl").write_text('"stale"\n')  # a crashed run's hidden file
    flow = Dataflow()
    flow.from_iterable([]).to_files(out)  # this run writes nothing at all
    run(flow)
    assert sorted(p.name for p in out.iterdir()) == []
    flow = Dataflow()
    flow.from_iterable([1, (2, "x")]).to_files(out)
    run(flow)
    assert [p.name for p in out.iterdir()] == ["part-k0-e00000001.jsonl"]
    assert (out / "part-k0-e00000001.jsonl").read_text() == '1\n[2, "x"]\n'
    flow = Dataflow()
    flow.from_iterable([]).to_files(out)  # a run of no records replaces that one's with none
    run(flow)
    assert list(out.iterdir()) == []


def test_without_a_state_dir_a_failed_run_leaves_the_earlier_runs_output(tmp_path):
    """"Replacing an earlier run's" files happens when this run's are ready
    to take their place: a run that fails leaves them (it deleted them at
    its start, so the directory held neither run's output)."""
    out = tmp_path / "out"

    def written() -> list:
        return sorted(json.loads(line) for f in out.glob("part-*.jsonl") for line in f.read_text().split())

    def fail_at(n):
        def check(x):
            if x == n:
                raise ValueError("boom")
            return x
        return check

    for state_dir in (None, tmp_path / "state"):  # an earlier run with epochs, or without
        flow = Dataflow()
        flow.from_iterable(range(10)).to_files(out)
        run(flow, state_dir=state_dir)
        assert written() == list(range(10))
        flow = Dataflow()
        flow.from_iterable(range(100, 110), batch_size=2).map(fail_at(105)).to_files(out)
        with pytest.raises(KernelError, match="boom"):
            run(flow)
        assert written() == list(range(10))
        flow = Dataflow()
        flow.from_iterable(range(100, 110)).to_files(out)
        run(flow)
        assert written() == list(range(100, 110))
        assert [f.name for f in out.iterdir()] == ["part-k0-e00000001.jsonl"]
        shutil.rmtree(out)


def test_a_run_on_fewer_kernels_replaces_the_output_of_one_on_more(tmp_path):
    """The files of kernels a run does not have are an earlier run's: gone,
    with or without a state_dir (a resumed run has as many kernels as the
    run it resumes)."""
    out = tmp_path / "out"
    for cores, state_dir in ((3, None), (1, None), (2, tmp_path / "state"), (1, tmp_path / "state1")):
        flow = Dataflow()
        flow.from_iterable(range(10)).to_files(out)
        run(flow, cores=cores, state_dir=state_dir)
        written = sorted(json.loads(line) for f in out.glob("part-*.jsonl") for line in f.read_text().split())
        assert written == list(range(10)), (cores, state_dir)
        assert {f.name.split("-")[1] for f in out.glob("*part-*")} == {f"k{k}" for k in range(cores)}


def test_a_record_json_cannot_write_is_a_clear_error(tmp_path):
    flow = Dataflow()
    flow.from_iterable([1, {2}]).to_files(tmp_path / "out")
    with pytest.raises(KernelError) as info:
        run(flow)
    assert "to_files(" in str(info.value) and "json.dumps" in str(info.value)
    assert "{2}" in str(info.value)


class _Stop(BaseException):
    """A user's own control-flow exception, outside the Exception hierarchy."""


class _Items(dict):
    """A record whose own code raises while json.dumps reads it (its
    items(): the encoder calls a dict subclass's), `times` times at most."""

    def __init__(self, exc: BaseException, times: int = 10**9) -> None:
        super().__init__(a=1)
        self.exc, self.times = exc, times

    def items(self):
        if self.times:
            self.times -= 1
            raise self.exc
        return super().items()

    def __repr__(self):
        return f"_Items({type(self.exc).__name__})"


def _nested(depth: int) -> list:
    record: list = []
    for _ in range(depth):
        record = [record]
    return record


@pytest.mark.parametrize("bad, raised", [
    (_nested(100_000), "RecursionError: maximum recursion depth exceeded while encoding a JSON object"),
    (_Items(KeyError("k")), "KeyError: 'k'"),
    (_Items(_Stop("halt")), "_Stop: halt"),
    (_Items(ValueError("only once"), times=1), "ValueError: only once"),
], ids=["too-deep", "KeyError", "Stop", "once"])
def test_whatever_a_record_raises_in_json_dumps_names_the_sink_and_the_record(tmp_path, bad, raised):
    """Only TypeError and ValueError named the record: anything else a
    record's own code raised while it was encoded (or a nesting too deep)
    named `ToFiles.on_batch` and no record; and a record that raised only
    once was looked for again by encoding every record once more, which
    found none (StopIteration)."""
    flow = Dataflow()
    flow.from_iterable([1, bad, 2]).to_files(tmp_path / "out")
    with pytest.raises(KernelError) as info:
        run(flow)
    first, record = str(info.value).splitlines()[:2]
    assert first == f"operator 'to_files({tmp_path / 'out'}) (step 1)': function 'json.dumps' raised {raised}"
    assert record == f"  on record: {reprlib_of(bad)}"
    assert not list((tmp_path / "out").glob("part-*"))  # nothing published


def reprlib_of(record) -> str:
    from kernel.dataflow._errors import describe_record

    return describe_record(record)


def test_a_ctrl_c_while_a_record_is_encoded_passes_as_itself(tmp_path):
    flow = Dataflow()
    flow.from_iterable([1, _Items(KeyboardInterrupt()), 2]).to_files(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        run(flow)


@pytest.mark.parametrize("bad", [math.nan, math.inf, {"x": [1.5, -math.inf]}, ("t", math.nan)])
def test_a_record_with_nan_or_infinity_is_refused_naming_it(tmp_path, bad):
    """json.dumps writes NaN and Infinity, which are no JSON: the files were
    written, and from_files(format="jsonl") refused them."""
    flow = Dataflow()
    flow.from_iterable([1, bad, 2]).to_files(tmp_path / "out")
    with pytest.raises(KernelError) as info:
        run(flow)
    with pytest.raises(ValueError) as json_error:
        json.dumps(bad, allow_nan=False)
    assert str(info.value) == (
        f"operator 'to_files({tmp_path / 'out'}) (step 1)': function 'json.dumps' raised ValueError: "
        f"{json_error.value}\n  on record: {bad!r}\n  NaN and the infinities are no JSON numbers "
        "(from_files would refuse the file): map them to None or a str before to_files")
    assert not list((tmp_path / "out").glob("part-*"))  # nothing published


finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | finite | st.text(),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


@settings(max_examples=25, deadline=None)
@given(records=st.lists(json_values | st.floats(), min_size=1, max_size=6))
def test_what_to_files_writes_from_files_reads_back(tmp_path_factory, records):
    """Either every record comes back as it went (JSON Lines that from_files
    reads), or a NaN or an infinity was refused: never a file that cannot be
    read back."""
    out = tmp_path_factory.mktemp("out")
    flow = Dataflow()
    flow.from_iterable(records).to_files(out)
    try:
        run(flow)
    except KernelError as error:
        assert "NaN and the infinities are no JSON numbers" in str(error)
        assert any(isinstance(r, float) and not math.isfinite(r) for r in records)
        return
    reading = Dataflow()
    back = reading.from_files(out / "part-*.jsonl", format="jsonl").collect()
    run(reading)
    assert back.items == records


def test_a_str_that_is_not_utf8_is_an_error_naming_its_record(tmp_path):
    """A lone surrogate (a JSON "\\udcff" escape, bytes decoded with
    surrogateescape) passes json.dumps, then fails the file's UTF-8
    encoding: the error named no record."""
    bad = {"name": json.loads('"caf\\udcff"')}
    flow = Dataflow()
    flow.from_iterable([{"name": "ok"}, bad, {"name": "ok too"}]).to_files(tmp_path / "out")
    with pytest.raises(KernelError) as info:
        run(flow)
    assert "to_files(" in str(info.value) and "UnicodeEncodeError" in str(info.value)
    assert repr(bad) in str(info.value)


def test_an_operator_whose_commit_fails_fails_the_run(tmp_path):
    """Found in review: an on_commit error went to the loop's exception
    handler (a failed final commit then hung the run)."""
    import time

    class Publisher(Operator):
        def on_batch(self, port, batch):
            time.sleep(0.005)

        def on_commit(self, epoch):
            if epoch >= 2:
                raise RuntimeError(f"publish of epoch {epoch} failed")

    flow = Dataflow("publishing")
    flow.from_iterable(range(200), batch_size=10).apply(Publisher)
    with pytest.raises(KernelError, match="publish of epoch 2 failed") as info:
        run(flow, state_dir=tmp_path, epoch_interval=0.02)
    assert "Publisher.on_commit" in str(info.value)


def test_a_source_without_a_position_is_warned_about(tmp_path, caplog):
    from kernel import Source

    class Once(Source):
        def poll(self):
            self.emit([1, 2, 3])
            return False

    flow = Dataflow("custom")
    flow.source(Once, name="once").collect()
    with caplog.at_level(logging.WARNING, logger="kernel"):
        run(flow, state_dir=tmp_path)
    assert "once (step 0) keeps no position" in caplog.text


def test_what_a_run_recorded_is_read_for_the_epochs_it_wrote():
    """`record_run(E, r)`: the run resuming epoch E said r of its steps (a
    Redis source's stream list); the epochs after E are that run's, until a
    run resumes a later one. A run that resumed E and wrote nothing complete
    is replaced by the next run resuming E; a run falling back past an
    abandoned line drops that line's records; records no kept epoch needs go."""
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        store = SnapshotStore(directory)
        store.claim("flow-r", 1, SNAPSHOT_LAYOUT)
        assert store.recorded_run(1) is None  # (a store written before records)

        def complete(*epochs):
            for epoch in epochs:
                store.write(epoch, 0, b"x")
                store.mark_complete(epoch)

        store.record_run(0, {"0": ["a"]})
        complete(1, 2)
        store.record_run(2, {"0": ["a", "b"]})  # crashed before its first epoch
        store.record_run(2, {"0": ["a", "c"]})
        assert store.recorded_run(2) == {"0": ["a"]}  # written by the first run
        complete(3)
        assert store.recorded_run(3) == {"0": ["a", "c"]}
        store.record_run(3, {"0": ["d"]})
        store.record_run(2, {"0": ["e"]})  # fell back to 2 (3 corrupt): run@3's line abandoned
        assert store.recorded_run(3) == store.recorded_run(9) == {"0": ["e"]}
        assert store.recorded_run(2) == {"0": ["a"]}
        complete(3, 4, 5)  # the kept epochs are 4 and 5, written by the run that resumed 2
        store.record_run(5, {"0": ["f"]})
        runs = sorted(key for key, _ in store._query("SELECT key, value FROM meta") if key.startswith("run@"))
        assert runs == ["run@2", "run@5"]
        assert store.recorded_run(5) == {"0": ["e"]} and store.recorded_run(6) == {"0": ["f"]}
        store.close()


def test_a_store_that_cannot_be_made_says_why_even_where_its_leftovers_cannot_go(tmp_path, monkeypatch):
    """Linking the new store into place fails (a file system that refuses
    it), and so does removing the half-made file after (read-only by then):
    the cleanup's own PermissionError, not the link's failure, was what the
    run said (only FileNotFoundError was let pass)."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "link", refuse)
    monkeypatch.setattr(os, "unlink", refuse)
    with pytest.raises(StateError, match=r"cannot create snapshots\.sqlite: Permission denied"):
        SnapshotStore(tmp_path)
    monkeypatch.undo()
    assert not os.path.exists(tmp_path / "snapshots.sqlite")
