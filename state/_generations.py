"""Generations of store files in a `state_dir`: which file a run writes, and
where a resumed run reads the epoch it resumes from.

A *generation* is the store files that runs of one shape write, one after
another, each resuming the last:

* `snapshots.sqlite`: a one-process run's (on any number of kernels: that
  store keeps each epoch's kernel count and cuts by key group itself);
* `snapshots-process{P}.sqlite`: process P of a cluster's (one file each,
  so the `state_dir` may be local to each machine or shared).

A run resumed on another shape (one process after a cluster, a cluster after
one process, another number of processes or of cores each) starts a new
generation named after the epoch it resumes from (and a cluster's shape:
`snapshots-e{E}.sqlite`, `snapshots-e{E}-{processes}x{cores}-process{P}.sqlite`)
and reads that epoch from the old generation's files: every old kernel's
snapshot, cut by key group (`kernel/runtime/_rescale.py`). A cluster can do that only where every
process sees every old file: a `state_dir` they share. New files rather than
the old ones rewritten: the old epoch stays readable until the new
generation has completed epochs of its own, and no old kernel's rows (a
FINAL snapshot, say) can be taken for a new kernel's. Once the new
generation has two complete epochs, the files of every other generation are
deleted (`retire_others`).

The newest complete epoch of all generations is the one a run resumes from:
epochs count on across generations, and only one generation ever completes
a given epoch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import sqlite3  # (imported where used: a run without a state_dir does without it)

_NAME = re.compile(r"^snapshots(?:-e(\d+))?(?:-(\d+)x(\d+))?(?:-process(\d+))?\.sqlite$")
_SIDE_FILES = ("", "-wal", "-shm", "-journal")


@dataclass(frozen=True, order=True)
class Generation:
    """`epoch`: the epoch it started from (0: a fresh start); `cluster`:
    whether a cluster's processes write it (one file each); `shape`: a
    resumed cluster's (processes, cores each), part of its files' names
    (None: a fresh start's or one process's)."""

    epoch: int
    cluster: bool
    shape: tuple[int, int] | None = None

    def file_name(self, process: int | None = None) -> str:
        stem = "snapshots" if self.epoch == 0 else f"snapshots-e{self.epoch}"
        if self.shape is not None:
            stem += f"-{self.shape[0]}x{self.shape[1]}"
        return f"{stem}-process{process}.sqlite" if self.cluster else f"{stem}.sqlite"

    def describe(self) -> str:
        since = f" since epoch {self.epoch}" if self.epoch else ""
        return f"{'a cluster' if self.cluster else 'one process'}'s snapshots{since}"


def generation_of(name: str) -> Generation | None:
    """The generation a store file of this name belongs to (None: not a store file)."""
    match = _NAME.match(name)
    if match is None:
        return None
    epoch, processes, cores, process = match.groups()
    shape = None if processes is None else (int(processes), int(cores))
    return Generation(int(epoch or 0), process is not None, shape)


def generations(directory) -> dict[Generation, dict[int | None, str]]:
    """The generations whose files are in `directory`: {generation: {process
    (None for one process): file name}}."""
    found: dict[Generation, dict[int | None, str]] = {}
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return found
    except OSError as exc:  # a file, not a directory; no permission
        from ._store import unusable_directory

        raise unusable_directory(os.fspath(directory), exc) from exc
    for name in names:
        generation = generation_of(name)
        if generation is not None:
            process = _NAME.match(name).group(4)
            found.setdefault(generation, {})[None if process is None else int(process)] = name
    return found


@dataclass
class Seen:
    """What one generation's files in one directory hold (read-only):
    `complete` (epoch, final, kernels) newest first, merged over its files
    (process 0's marks an epoch complete first); `rows` the (epoch, kernel,
    kernels) snapshots there (FINAL too); `meta` the first file's."""

    complete: list[tuple[int, bool, int]]
    rows: set[tuple[int, int, int]]
    meta: dict[str, str]


def look(directory, files: dict[int | None, str]) -> Seen:
    complete: dict[int, tuple[int, bool, int]] = {}
    rows: set[tuple[int, int, int]] = set()
    meta: dict[str, str] = {}
    for process in sorted(files, key=lambda p: -1 if p is None else p):
        db = _read_only(os.path.join(directory, files[process]))
        try:
            for epoch, final, kernels in _rows(db, "SELECT epoch, final, kernels FROM complete"):
                complete[epoch] = (epoch, bool(final) or complete.get(epoch, (0, False, 0))[1], kernels)
            rows.update(_rows(db, "SELECT epoch, kernel, kernels FROM snapshots"))
            meta = meta or dict(_rows(db, "SELECT key, value FROM meta"))
        finally:
            db.close()
    return Seen(sorted(complete.values(), reverse=True), rows, meta)


def read_epoch(directory, generation: Generation, epoch: int, kernels: int, read) -> list[bytes]:
    """Every one of `kernels` old kernels' snapshot of `epoch` from the
    generation's files here: its own, or its FINAL one when it had ended
    before (`read(store file name, epoch, kernel, kernels)` reads one,
    checksum checked). Raises LookupError naming the kernels none holds."""
    from ._store import FINAL

    where: dict[tuple[int, int], str] = {}  # (epoch or FINAL, kernel) -> the file holding it
    for name in generations(directory).get(generation, {}).values():
        db = _read_only(os.path.join(directory, name))
        try:
            for at, kernel in _rows(db, "SELECT epoch, kernel FROM snapshots WHERE epoch IN (?, ?) AND "
                                        "kernels = ?", (epoch, FINAL, kernels)):
                where[(at, kernel)] = name
        finally:
            db.close()
    found = [(epoch, k) if (epoch, k) in where else (FINAL, k) for k in range(kernels)]
    missing = [k for at, k in found if (at, k) not in where]
    if missing:
        raise LookupError(missing)
    return [read(where[(at, k)], at, k, kernels) for at, k in found]


def steps_parts(directory, files: dict[int | None, str], steps: set[int]) -> dict[tuple[int, int, int], dict]:
    """The parts of the steps `steps` (by index) in every snapshot of a
    generation's files here, `{(epoch, kernel, kernels): {step: pickled part
    or "ended"}}` (read-only): what a cluster's process 0 checks, before
    anything runs, of the epoch it decides on (`Node.cut_on_resume`), from
    every process's offer. A snapshot that fails its checksum is left out
    (the kernel that reads it says so)."""
    import pickle
    import zlib

    found = {}
    for name in files.values():
        db = _read_only(os.path.join(directory, name))
        try:
            for epoch, kernel, kernels, crc, blob in _rows(
                    db, "SELECT epoch, kernel, kernels, crc, blob FROM snapshots"):
                if zlib.crc32(blob) == crc:
                    parts = pickle.loads(blob)
                    found[(epoch, kernel, kernels)] = {step: parts[step] for step in steps if step in parts}
        finally:
            db.close()
    return found


def retire_others(directory, mine: Generation) -> list[str]:
    """Delete the files of every generation but `mine` (superseded: `mine`
    has complete epochs newer than any of theirs). Another process sharing
    the directory may be deleting them too."""
    gone = []
    for generation, files in generations(directory).items():
        if generation == mine:
            continue
        for name in files.values():
            for suffix in _SIDE_FILES:
                try:
                    os.unlink(os.path.join(directory, name + suffix))
                except FileNotFoundError:
                    continue
            gone.append(name)
    return sorted(gone)


def _read_only(path: str) -> sqlite3.Connection:
    import sqlite3

    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)


def _rows(db: sqlite3.Connection, sql: str, args: tuple = ()) -> list[tuple]:
    import sqlite3

    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # created and not yet claimed
            return []
        raise


def newest(directory, fingerprint: str, layout: str):
    """The generation holding the newest complete epoch in `directory`:
    (generation, that epoch's (epoch, final, kernels), its key groups), or
    None when no epoch is complete. Every generation's files are checked to
    be this flow's, in this layout (StateError otherwise, as
    `SnapshotStore.claim`), and intact (a damaged file is a StateError)."""
    found = complete_epochs(directory, fingerprint, layout)
    return found[0] if found else None


def complete_epochs(directory, fingerprint: str, layout: str) -> list:
    """Every complete epoch of every generation here, newest first, as
    `newest` gives the first: what a run falls back through when the newest
    does not read back intact (its snapshot fails its checksum)."""
    import sqlite3

    from ._store import SnapshotStore, StateError, check_meta

    found = []
    try:
        for generation, files in generations(directory).items():
            for name in files.values():  # a damaged page can read back as rows that never were
                store = SnapshotStore(directory, name)
                try:
                    store.check_intact()
                finally:
                    store.close()
            seen = look(directory, files)
            if seen.meta:
                check_meta(directory, seen.meta, fingerprint, layout)
            found += [(generation, complete, int(seen.meta["key_groups"])) for complete in seen.complete]
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # (the latter: bytes of a name changed)
        raise StateError(f"state_dir {os.fspath(directory)!r}: cannot read its snapshots ({exc}); move it "
                         "aside to run this flow afresh") from exc
    return sorted(found, key=lambda item: item[1], reverse=True)


def failing(directory, files: dict[int | None, str], complete: list[int]) -> set[tuple[int, int, int]]:
    """The (epoch, kernel, kernels) snapshots of a generation's files here
    that fail their checksum (read-only; each snapshot read whole), of the
    epochs a resume may need: from the newest of its `complete` epochs on
    (a process ahead may have completed the next; FINAL ones too), and the
    one before only where one of those fails (a start read every kept
    snapshot twice otherwise)."""
    import zlib

    def check(low: int, high: int) -> set:
        bad = set()
        for name in files.values():
            db = _read_only(os.path.join(directory, name))
            try:
                for epoch, kernel, kernels, crc, blob in _rows(
                        db, "SELECT epoch, kernel, kernels, crc, blob FROM snapshots WHERE epoch >= ? AND "
                            "epoch < ?", (low, high)):
                    if zlib.crc32(blob) != crc:
                        bad.add((epoch, kernel, kernels))
            finally:
                db.close()
        return bad

    if not complete:
        return set()
    bad: set = set()
    checked = (1 << 63) - 1  # (SQLite's largest integer: past FINAL)
    for epoch in complete:
        # (a delta's chain too, back to its base: a corrupt link spoils it)
        low = _chain_floor(directory, files, epoch)
        more = check(low, checked) if low < checked else set()
        checked = min(checked, low)
        bad |= more
        bad |= _spoiled(directory, files, bad)
        if not bad or (epoch != complete[0] and not more):
            break
    return bad


# the oldest base of the deltas of an epoch and after (`_chain_floor`)
_OLDEST_BASE = (
    "SELECT min((SELECT max(s.epoch) FROM snapshots s WHERE s.kernel = d.kernel AND s.kernels = d.kernels "
    "AND s.epoch < d.epoch AND NOT EXISTS (SELECT 1 FROM deltas x WHERE x.epoch = s.epoch AND "
    "x.kernel = s.kernel AND x.kernels = s.kernels))) FROM deltas d WHERE d.epoch >= ?")


def _chain_floor(directory, files: dict[int | None, str], epoch: int) -> int:
    """The oldest snapshot that the chains of deltas of `epoch` and after
    need (`SnapshotStore._chain`): `epoch` where none is a delta."""
    floor = epoch
    for name in files.values():
        db = _read_only(os.path.join(directory, name))
        try:
            [(base,)] = _rows(db, _OLDEST_BASE, (epoch,)) or [(None,)]
        finally:
            db.close()
        if base is not None:
            floor = min(floor, base)
    return floor


def _spoiled(directory, files: dict[int | None, str], bad: set) -> set:
    """The deltas whose chain holds a snapshot in `bad`, or lacks one."""
    spoiled = set()
    for name in files.values():
        db = _read_only(os.path.join(directory, name))
        try:
            rows = set(_rows(db, "SELECT epoch, kernel, kernels FROM snapshots"))
            deltas = sorted(_rows(db, "SELECT epoch, kernel, kernels FROM deltas"))
        finally:
            db.close()
        for epoch, kernel, kernels in deltas:  # (oldest first: a spoiled link spoils the next)
            link = (epoch - 1, kernel, kernels)
            if link in bad or link in spoiled or link not in rows:
                spoiled.add((epoch, kernel, kernels))
    return spoiled


def abandon_after(directory, epoch: int, process: int | None = None) -> None:
    """A run resumes `epoch` (0: afresh), older than some generation's
    newest complete one (which failed its checksum): every generation's
    epochs past it are a line no run continues (`SnapshotStore.discard_after`),
    in the files of `process` here (None: all of them, one process's run).
    Left, a later run took the abandoned line's higher epoch numbers for the
    newest, and resumed it past the epochs this run wrote (records lost)."""
    from ._store import SnapshotStore

    for files in generations(directory).values():
        for owner, name in files.items():
            if process is not None and owner != process and not (owner is None and process == 0):
                continue
            store = SnapshotStore(directory, name)
            try:
                completed = store.completed()
                if completed and completed[0][0] > epoch:
                    store.discard_after(epoch)
            finally:
                store.close()


def read_old_epoch(directory, generation: Generation, epoch: int, kernels: int, why: str) -> list:
    """`read_epoch` with the store's checksums, and StateError naming the
    kernels whose snapshots are not here (`why`: what to do about it); a
    snapshot put together from a chain as its parts, for this process
    (`SnapshotStore.read`'s `as_parts`)."""
    import sqlite3

    from ._store import SnapshotStore, StateError

    stores: dict[str, SnapshotStore] = {}

    def read(name: str, epoch: int, kernel: int, count: int) -> bytes:
        if name not in stores:
            stores[name] = SnapshotStore(directory, name)
        return stores[name].read(epoch, kernel, count, as_parts=True)

    try:
        return read_epoch(directory, generation, epoch, kernels, read)
    except LookupError as exc:
        (missing,) = exc.args
        plural = "s" if len(missing) > 1 else ""
        raise StateError(
            f"state_dir {os.fspath(directory)!r} lacks the snapshots of kernel{plural} "
            f"{', '.join(map(str, missing))} of epoch {epoch} ({generation.describe()}, {kernels} "
            f"kernel{'s' if kernels > 1 else ''}): {why}") from None
    except sqlite3.DatabaseError as exc:
        raise StateError(f"state_dir {os.fspath(directory)!r}: cannot read epoch {epoch} ({exc})") from exc
    finally:
        for store in stores.values():
            store.close()
