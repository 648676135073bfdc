"""Durability of to_files output and snapshots across a power loss, and
crash consistency at chosen points.

A SIGKILL leaves everything the kernel of the OS holds: a power loss
keeps only what was fsynced. A file is durable only once its data is
fsynced *and* the directory holding its name is: an epoch marked complete
while the name of a file it relies on (a hidden part file, the directory
of the output) is not yet durable can lose that file after a power loss,
and with it the records of a complete epoch (the resumed run starts after
them). Power loss cannot be cut in a test, so the order of the OS calls is
recorded (os.fsync, os.replace/os.rename: the OS's, not our transports)
and the invariant checked each time an epoch is recorded complete: every
part file of the epochs up to it is in the last fsynced listing of its
directory (under its hidden or its visible name: a rename is atomic, so a
power loss leaves one of the two), holds no more bytes than its last data
fsync saw, and every directory the run made is in its parent's. The
recorder logs to a file with O_APPEND, so kernel processes (forked: the
patches go with them) record into the same sequence as the launcher, which
marks epochs complete.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import time
from pathlib import Path

import pytest

from kernel import Dataflow, KernelError, run
from state import SnapshotStore
from tests._crash_runs import assert_each_once, newest_complete

_PART = re.compile(r"^\.?part-k\d+-e(\d+)\.jsonl$")


def _slow(x):
    if x % 40 == 0:
        time.sleep(0.003)  # spread the run over several epochs
    return x


def _flow(out: Path, n: int, slow: bool = True) -> Dataflow:
    flow = Dataflow("durable")
    numbers = flow.from_iterable(range(n), batch_size=20)
    (numbers.map(_slow) if slow else numbers.map(lambda x: x)).to_files(out)  # (one flow's shape either way)
    return flow


class Recorder:
    """The sequence of fsyncs and renames, in every process of the run (an
    O_APPEND log, one JSON line a call), and the check at each epoch record."""

    def __init__(self, log: Path, made: list[Path] = (), outputs: list[Path] = ()) -> None:
        self.log = str(log)
        self.made = [str(p) for p in made]  # what the run creates: each must be in its parent's listing
        self.outputs = [str(p) for p in outputs]  # to_files directories: their part files are checked
        self.checked: list[int] = []
        self.problems: list[str] = []

    def record(self, event: dict) -> None:
        fd = os.open(self.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(event) + "\n").encode())
        finally:
            os.close(fd)

    def events(self) -> list[dict]:
        with open(self.log) as f:
            return [json.loads(line) for line in f]

    def patch(self, monkeypatch) -> None:
        real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

        def fsync(fd):
            path = os.readlink(f"/proc/self/fd/{fd}")
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                # the names there now are what this fsync makes durable
                listing = {entry.name: entry.inode() for entry in os.scandir(path)}
                self.record({"op": "dirsync", "path": path, "listing": listing})
            else:
                self.record({"op": "fsync", "path": path, "ino": info.st_ino, "size": info.st_size})
            return real_fsync(fd)

        def renamer(real, name):
            def rename(src, dst, *args, **kwargs):
                real(src, dst, *args, **kwargs)
                self.record({"op": name, "src": os.fspath(src), "dst": os.fspath(dst)})
            return rename

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", renamer(real_replace, "replace"))
        monkeypatch.setattr(os, "rename", renamer(real_rename, "rename"))
        real_mark = SnapshotStore.mark_complete
        recorder = self

        def mark_complete(store, epoch, final=False):
            recorder.check(epoch)  # before the epoch's durable record
            return real_mark(store, epoch, final)

        monkeypatch.setattr(SnapshotStore, "mark_complete", mark_complete)

    def durable(self) -> tuple[dict[str, dict[str, int]], dict[int, int]]:
        """{directory: its last fsynced listing}, {inode: size at its last data fsync}."""
        listings: dict[str, dict[str, int]] = {}
        synced: dict[int, int] = {}
        for event in self.events():
            if event["op"] == "dirsync":
                listings[event["path"]] = event["listing"]
            elif event["op"] == "fsync":
                synced[event["ino"]] = event["size"]
        return listings, synced

    def check(self, epoch: int) -> None:
        self.checked.append(epoch)
        listings, synced = self.durable()
        for made in self.made:
            parent, name = os.path.split(made)
            if listings.get(parent, {}).get(name) != os.stat(made).st_ino:
                self.problems.append(f"epoch {epoch}: {made} is not in a fsynced listing of {parent}")
        for directory in self.outputs:
            for entry in os.scandir(directory):
                match = _PART.match(entry.name)
                if not match or int(match.group(1)) > epoch:
                    continue  # (an epoch after this one: not relied on yet)
                ino, size = entry.inode(), entry.stat().st_size
                if ino not in listings.get(directory, {}).values():
                    self.problems.append(f"epoch {epoch}: {entry.name}'s name is not durable in {directory}")
                if synced.get(ino) != size:
                    self.problems.append(f"epoch {epoch}: {entry.name} holds {size} bytes, "
                                         f"{synced.get(ino)} fsynced")

    def check_published(self, directory: Path) -> None:
        """At the end: every visible file's name (after its rename) is durable."""
        listing = self.durable()[0].get(str(directory), {})
        for path in directory.glob("part-*.jsonl"):
            if listing.get(path.name) != path.stat().st_ino:
                self.problems.append(f"at the end: {path.name} was renamed and its directory not fsynced")


def _lines(directory: Path) -> list:
    return [json.loads(line) for path in sorted(directory.glob("part-*.jsonl"))
            for line in path.read_text().splitlines()]


@pytest.mark.parametrize("cores", [1, 2])
def test_every_part_file_a_complete_epoch_relies_on_has_a_durable_name_first(tmp_path, cores):
    """A hidden part file's name was never fsynced before its epoch was
    marked complete (only the renames at commits fsynced the directory, by
    chance after the next epoch's file was made, never before epoch 1's):
    after a power loss the epoch's records could be gone while the store
    says the epoch is complete (a resumed run never writes them again)."""
    for attempt in range(5):
        # a run spread over several epochs by time: a loaded machine may
        # complete fewer (one, in a run beside two other suites): again then
        root = tmp_path / str(attempt)
        out = root / "out"
        out.mkdir(parents=True)
        recorder = Recorder(root / "calls.log", outputs=[out])
        with pytest.MonkeyPatch.context() as patched:
            recorder.patch(patched)
            run(_flow(out, 1200), cores=cores, state_dir=root / "state", epoch_interval=0.02)
        recorder.check_published(out)
        assert recorder.problems == [], "\n".join(recorder.problems)
        assert_each_once(_lines(out), 1200)
        if len(recorder.checked) >= 3:
            break
    assert len(recorder.checked) >= 3, recorder.checked  # (several epochs, each checked)


def test_the_directories_and_the_store_a_run_makes_have_durable_names_before_an_epoch_completes(
        tmp_path, monkeypatch):
    """to_files's directory (and its parents) and the state_dir, made by the
    run, and the store file in it: their names were never fsynced into their
    parents (the store's only by SQLite's own journal syncs, which Python
    does not see: made explicit). After a power loss a complete epoch could
    be left with no output directory, or no state_dir."""
    out, state = tmp_path / "made" / "out", tmp_path / "state"
    recorder = Recorder(tmp_path / "calls.log", made=[out.parent, out, state, state / "snapshots.sqlite"])
    recorder.patch(monkeypatch)
    run(_flow(out, 600), state_dir=state, epoch_interval=0.02)
    assert recorder.checked, "no epoch was recorded complete"
    assert recorder.problems == [], "\n".join(recorder.problems)


def _fail_fsync_of(monkeypatch, matches, code: int) -> None:
    real = os.fsync

    def fsync(fd):
        if matches(os.readlink(f"/proc/self/fd/{fd}")):
            raise OSError(code, os.strerror(code))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_a_part_file_whose_fsync_fails_is_named_and_its_epoch_never_completes(tmp_path, monkeypatch, code):
    """An fsync of a part file that fails (EIO, ENOSPC): the run ended with
    "to_files ...: function ToFiles.on_epoch raised OSError: [Errno 5]
    Input/output error", naming no file (and blaming the library's own
    operator as if it were user code)."""
    out, state = tmp_path / "out", tmp_path / "state"
    # The part file of the first epoch after the first that has one: a
    # loaded CI once had an epoch 2 with no records (two epochs' timers in a
    # row after a stall), so no file of its own to fail.
    failed: list[tuple[str, int]] = []

    def matches(path: str) -> bool:
        found = re.fullmatch(re.escape(str(out)) + r"/\.part-k0-e(\d+)\.jsonl", path)
        if found and int(found[1]) >= 2 and (not failed or failed[0][0] == path):
            failed[:1] = [(path, int(found[1]))]
            return True
        return False

    _fail_fsync_of(monkeypatch, matches, code)
    with pytest.raises(KernelError) as info:
        run(_flow(out, 1200), state_dir=state, epoch_interval=0.02)
    message = str(info.value)
    failing, epoch = failed[0]
    assert failing in message and os.strerror(code) in message, message
    assert "on_epoch" not in message
    assert newest_complete(state) < epoch  # the epoch that file holds never counts as complete


def test_a_directory_fsync_that_fails_at_a_commit_names_the_directory(tmp_path, monkeypatch):
    out, state = tmp_path / "out", tmp_path / "state"
    synced = []

    def matches(path):  # the second fsync of the output directory
        if path == str(out):
            synced.append(path)
        return len(synced) == 2 and path == str(out)

    _fail_fsync_of(monkeypatch, matches, errno.EIO)
    with pytest.raises(KernelError) as info:
        run(_flow(out, 1200), state_dir=state, epoch_interval=0.02)
    message = str(info.value)
    assert str(out) in message and os.strerror(errno.EIO) in message, message
    assert "on_commit" not in message and "on_epoch" not in message


def test_a_full_output_disk_names_the_part_file_and_the_run_resumes_once_there_is_room(tiny_disk, tmp_path):
    """The output directory's disk fills up (a real one: a 192 KiB tmpfs):
    the error named no file ("on_batch raised OSError: [Errno 28] No space
    left on device"). Given room, the run resumes and publishes every
    record exactly once."""
    import subprocess

    out, state = tiny_disk / "out", tmp_path / "state"
    n = 40_000  # ~240 KB of lines
    with pytest.raises(KernelError) as info:
        run(_flow(out, n, slow=False), state_dir=state, epoch_interval=0.02)
    message = str(info.value)
    assert re.search(rf"{re.escape(str(out))}/\.part-k0-e\d{{8}}\.jsonl", message), message
    assert os.strerror(errno.ENOSPC) in message, message
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    run(_flow(out, n, slow=False), state_dir=state, epoch_interval=0.02)
    assert_each_once(_lines(out), n)
    assert not list(out.glob(".part-*"))
