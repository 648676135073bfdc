"""The durable snapshot store: one SQLite database under `state_dir`.

Why SQLite: it is in the standard library (no extra dependency), an embedded
store that survives `kill -9` and power loss when its commits are durable
(WAL journal, `synchronous=FULL`: the commit returns after the log is
fsynced), and several kernel processes can write to one database (writers
serialize on a lock; a snapshot write is one short transaction).

Tables:

* `meta`: the flow's fingerprint, the layout of the operators' snapshots
  (given by the caller), the number of key groups (fixed at the first run:
  keyed state moves between kernels by whole groups) and the number of
  kernels of the latest run, so a `state_dir` written by another flow or by
  a version of this library whose operators saved their state differently
  is refused with a clear error instead of being misread; and what each
  run said of its steps (`record_run`: a Redis source's stream list), by
  the epoch it resumed from;
* `snapshots(epoch, kernel, kernels, crc, blob)`: each kernel's snapshot of
  each epoch (`kernels`: how many the run that wrote it had), with a CRC-32
  of the blob checked when it is read (SQLite does not checksum its pages:
  a torn or bit-flipped blob must not be restored);
* `deltas(epoch, kernel, kernels)`: the snapshots that are deltas on the
  kernel's snapshot of the epoch before (`state/_deltas.py`); the others
  (all of a store an earlier version wrote) are whole. Reading a delta
  reads its chain: back to the newest whole one of its kernel before it;
* `complete(epoch, final, kernels)`: epochs every kernel has made durable,
  and on how many kernels. Only those are ever restored; `final` marks the
  end of a run that finished. A run resumed on another number of kernels
  reads every old kernel's snapshot of the epoch and cuts them by key group
  (`Operator.rescale`); until its own first epoch is complete, the old
  epoch (and its kernels' FINAL snapshots) is what a crash falls back to.

The two newest complete epochs are kept, and every snapshot their chains
need, so a snapshot found corrupt falls back to the previous complete epoch
(with a warning; a corrupt link of a chain makes every epoch that needs it
unusable, and the fallback goes on to an epoch whose chain is intact: where
the two share links, a third is kept for that, `SnapshotStore._fallback`). A
damaged database (a corrupted page, found by `PRAGMA quick_check` when a
run claims the store or by any query) is refused as a whole: nothing in it
can be trusted.
"""

from __future__ import annotations

import errno
import logging
import os
import zlib
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING

from kernel._durable import directory_unwritable, fsync_directory, make_directories
from kernel.dataflow import EVERY_EPOCH
from kernel.dataflow._errors import PASSES_THROUGH, KernelError
from kernel.dataflow._key_groups import default_key_groups

if TYPE_CHECKING:
    from ._deltas import Parts

log = logging.getLogger("kernel.state")

FILE_NAME = "snapshots.sqlite"
_KEEP_COMPLETE = 2
# A kernel whose work has all ended writes its last snapshot under FINAL (an
# epoch number after every epoch): it stands for that kernel in every later
# epoch (it takes part in none).
FINAL = EVERY_EPOCH


class StateError(KernelError):
    """A `state_dir` that cannot be used (another flow's, damaged, unreadable, full).
    A KernelError, so it ends a run as itself, not blamed on an operator."""


def unusable_directory(directory: str, exc: OSError) -> StateError:
    return StateError(f"state_dir {directory!r} cannot be used as a directory: "
                      f"{exc.strerror or exc}; give a directory this run may create and write")


def unwritable(directory: str, name: str) -> str | None:
    """What keeps this process from writing the store `name` in `directory`
    (a read-only file system, no permission to make files in it or to
    write the store's files), None when nothing does. Asked before SQLite
    is: its words were "unable to open database file" and "attempt to
    write a readonly database"."""
    why = directory_unwritable(directory)
    if why is not None:
        return f"the directory {why}"
    for file in (name, name + "-wal", name + "-shm"):  # (SQLite's WAL and its index, in WAL mode)
        path = os.path.join(directory, file)
        if _denied(path, os.W_OK):
            return f"{file} is read-only (no permission to write it)"
        if _denied(path, os.R_OK):
            return f"{file} is unreadable (no permission to read it)"
    return None


def _denied(path: str, mode: int) -> bool:
    """Whether this process may not use the file at `path` as `mode` says;
    False where there is no file. SQLite's -wal and -shm files come and go
    as the other processes of a shared state_dir open and close the store,
    and `os.access` says no for a file gone between the look and the ask: a
    cluster's process was refused its state_dir as "unreadable (no
    permission to read it)" (as root, which may read anything). So a no
    counts only where the same file (its inode) is there before and after."""
    for _ in range(3):  # (a file replaced under every look is let be: SQLite says what is wrong, if anything)
        try:
            before = os.stat(path)
        except OSError:  # (gone, or not ours to look at: SQLite's own words then)
            return False
        if os.access(path, mode):
            return False
        try:
            after = os.stat(path)
        except OSError:
            return False
        if (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino):
            return True
    return False


class CorruptSnapshot(StateError):
    pass


class Fingerprint(str):
    """A flow's fingerprint (`Graph.fingerprint`) with what it hashes, step
    by step (`Graph.fingerprint_steps`): a store keeps the steps, and a run
    of a changed flow is told which step differs."""

    steps: dict | None

    def __new__(cls, fingerprint: str, steps: dict | None = None):
        self = super().__new__(cls, fingerprint)
        self.steps = steps
        return self


def _steps_differ(rows: dict[str, str], fingerprint: str) -> str:
    """Which step of the flow differs from the store's (its `steps` row), in
    words, after ': '; "" where either side does not say (a store an earlier
    version wrote, a cluster's fingerprint)."""
    import json

    now = getattr(fingerprint, "steps", None)
    try:
        then = json.loads(rows["steps"])
        old_name, old_steps = then["name"], [tuple(step) for step in then["steps"]]
    except (KeyError, TypeError, ValueError):
        return ""
    if now is None:
        return ""
    new_steps = [tuple(step) for step in now["steps"]]
    if old_name != now["name"]:
        return f": it was written by the flow {old_name!r}, and this one is {now['name']!r}"
    for index, (old, new) in enumerate(zip(old_steps, new_steps)):
        if old[1] != new[1]:
            return (f": its step {index} was {old[0]!r}, and this flow's step {index} is {new[0]!r} "
                    "(another kind of step, or other inputs)")
    if len(old_steps) != len(new_steps):
        shorter = min(len(old_steps), len(new_steps))
        longer, more = (old_steps, "it has") if len(old_steps) > shorter else (new_steps, "this flow has")
        extra = ", ".join(f"step {index} {longer[index][0]!r}" for index in range(shorter, len(longer))[:3])
        return f": {more} {len(longer) - shorter} more step{'s' * (len(longer) - shorter > 1)}, {extra}"
    return ""


def check_meta(directory, rows: dict[str, str], fingerprint: str, layout: str) -> None:
    """Refuse a store (its `meta` rows) written by another flow or in
    another snapshot layout."""
    if rows.get("format") != layout:
        raise StateError(
            f"state_dir {os.fspath(directory)!r} holds snapshots in format {rows.get('format', '1')} "
            f"and this version reads format {layout} (its operators save their state "
            "differently); finish that run with the version that wrote it, or use a fresh state_dir"
        )
    if rows.get("flow") != fingerprint:
        raise StateError(
            f"state_dir {os.fspath(directory)!r} holds the state of another flow "
            f"(its steps differ from this one's{_steps_differ(rows, fingerprint)}); use a fresh state_dir "
            "for this flow"
        )
    # read as ints later (key groups, kernels): a byte flipped in a digit
    # passes SQLite's page check and must not surface as a bare ValueError
    # (or as "key groups must be a power of two" from a kernel)
    for key in ("key_groups", "kernels"):
        value = rows.get(key, "")
        if not (value.isdecimal() and value.isascii() and int(value) > 0) or (
                key == "key_groups" and int(value) & (int(value) - 1)):
            raise StateError(
                f"state_dir {os.fspath(directory)!r} is damaged: its {key} reads {value!r}, "
                f"{'not a power of two' if value.isdecimal() and value.isascii() else 'not a number'}; "
                "move it aside to run this flow afresh (its to_files output is then written again)")


_RUN = "run@"  # meta keys: what the run resuming epoch N said of its steps is "run@N"


def _runs(meta: dict[str, str]) -> dict[int, str]:
    """The `record_run` rows of a store's meta: {epoch resumed: meta key}."""
    runs = {}
    for key in meta:
        if key.startswith(_RUN):
            resumed = key[len(_RUN):]
            if not (resumed.isdecimal() and resumed.isascii()):  # a byte flipped in it: see check_meta
                raise StateError(f"a snapshot store is damaged: its meta holds the key {key!r}; move the "
                                 "state_dir aside to run this flow afresh")
            runs[int(resumed)] = key
    return runs


def recorded_before(meta: dict[str, str], epoch: int) -> dict | None:
    """What the run that wrote `epoch` said of its steps (`record_run`), from a
    store's `meta` rows: the record of the newest run that resumed an epoch
    before it (the epochs after E are written by the last run that resumed E:
    a run resumed from an epoch writes over what an earlier one had left of
    the epochs after it). None: no run recorded anything (a store written by
    an earlier version of this library)."""
    runs = _runs(meta)
    before = [resumed for resumed in runs if resumed < epoch]
    if not before:
        return None
    import json

    try:
        record = json.loads(meta[runs[max(before)]])
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise StateError(f"a snapshot store is damaged: its record of the run before epoch {epoch} does not "
                         "read back; move the state_dir aside to run this flow afresh")
    return record


_SCHEMA = """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS snapshots (
        epoch INTEGER NOT NULL, kernel INTEGER NOT NULL, kernels INTEGER NOT NULL,
        crc INTEGER NOT NULL, blob BLOB NOT NULL, PRIMARY KEY (epoch, kernel, kernels));
    CREATE TABLE IF NOT EXISTS complete (epoch INTEGER PRIMARY KEY, final INTEGER NOT NULL,
                                         kernels INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS deltas (
        epoch INTEGER NOT NULL, kernel INTEGER NOT NULL, kernels INTEGER NOT NULL,
        PRIMARY KEY (epoch, kernel, kernels));
"""
# errors of os.link where the file system has no hard links (`SnapshotStore._create`)
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
_DELTA_NAME = b"KeyedDelta"  # (in the pickle of a part that holds one: `read`)
_TABLES = {"meta", "snapshots", "complete", "deltas"}  # a store's own tables (`SnapshotStore.__init__`)
# their columns, as _SCHEMA makes them (`SnapshotStore.check_intact`)
_COLUMNS = {"meta": ("key", "value"), "snapshots": ("epoch", "kernel", "kernels", "crc", "blob"),
            "complete": ("epoch", "final", "kernels"), "deltas": ("epoch", "kernel", "kernels")}


# Less room than this left where SQLite reports an I/O error: the disk is full
# (the WAL's shared-memory file grows by 32 KiB)
_NEARLY_FULL = 1 << 20


def _free_bytes(directory: str) -> int | None:
    """The bytes an unprivileged writer may still use on `directory`'s file system."""
    try:
        info = os.statvfs(directory)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


class SnapshotStore:
    """A connection to the store of one `state_dir` (one per process: SQLite
    connections must not cross a fork)."""

    FINAL = FINAL

    def __init__(self, directory: str | os.PathLike, name: str = FILE_NAME) -> None:
        self.directory = os.fspath(directory)
        try:
            make_directories(self.directory)  # (its name durable: the epochs marked complete are in it)
        except OSError as exc:  # a file there, a read-only file system, no permission
            raise unusable_directory(self.directory, exc) from exc
        why = unwritable(self.directory, name)
        if why is not None:
            raise StateError(f"state_dir {self.directory!r}: {why}, so this run cannot write its snapshots "
                             "there; give the run a directory it may write")
        self.name = name
        self.path = os.path.join(self.directory, name)
        new = not os.path.exists(self.path)
        if new:
            new = self._create()
        elif os.path.getsize(self.path) == 0:
            # The file is made whole before it takes its name (`_create`), so an
            # empty one lost its content: a disk that lied about a flush, at a
            # power cut. SQLite took it for an empty store: a run started afresh
            # without a word, its state gone and its output written again.
            raise StateError(
                f"state_dir {self.directory!r}: {name} is empty (0 bytes), which this library never leaves "
                "it: its snapshots were lost (a disk that lost its writes at a power cut, or a file cut "
                "short); move the state_dir aside to run this flow afresh (its to_files output is then "
                "written again), or put back a copy of it")
        self._retired = False  # whether other generations' files were removed (`mark_complete`)
        import sqlite3  # (here, not at the top: a run without a state_dir does without it)

        with self._database(f"cannot open {name}"):
            # one thread at a time, but not always the one that opened it
            # (a kernel's snapshot writer thread)
            self._db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None,
                                       check_same_thread=False)
            tables = {t for (t,) in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                      if not t.startswith("sqlite_")}  # (SQLite's own: ANALYZE's statistics)
            if tables - _TABLES:  # (it took them as an empty store, and wrote its own tables beside them)
                ours = self._written_by_another_version(tables)
                self._db.close()
                unknown = ", ".join(sorted(tables - _TABLES))
                if ours is not None:
                    raise StateError(
                        f"state_dir {self.directory!r}: {name} holds snapshots that another version of this "
                        f"library wrote (format {ours}, with the tables {unknown}, which this version does "
                        "not know); finish that run with the version that wrote it, or use a fresh state_dir")
                raise StateError(f"state_dir {self.directory!r}: {name} is no snapshot store (it holds the "
                                 f"tables {', '.join(sorted(tables - _TABLES))}: another program's "
                                 "database?); give the flow a state_dir of its own")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        if new:
            # The new file's name durable before any epoch is recorded in it:
            # SQLite fsyncs the directory only for its journals (a build with
            # SQLITE_DISABLE_DIRSYNC not even that). Once a file, not an epoch.
            try:
                fsync_directory(self.directory)
            except OSError as exc:
                self._db.close()
                raise StateError(f"state_dir {self.directory!r}: cannot make {name} durable (fsync of the "
                                 f"directory: {exc.strerror or exc})") from exc

    def _written_by_another_version(self, tables: set[str]) -> str | None:
        """The snapshot format of a store with tables this version does not
        know, where its `meta` says it is a store of this library's (a
        flow, a format and key groups: a later version's, with a table of
        its own), None where it is not (another program's database)."""
        if "meta" not in tables:
            return None
        import sqlite3

        try:
            rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except (sqlite3.DatabaseError, ValueError, TypeError):  # (another program's meta: other columns)
            return None
        return rows["format"] if {"flow", "format", "key_groups"} <= rows.keys() else None

    def _create(self) -> bool:
        """Make the store file whole (its tables in it, fsynced) under a
        name of its own, then link it into place: the store's name is never
        an empty file, so one found empty lost its content (`__init__`).
        Linked, not renamed: a process that created it meanwhile keeps its
        own. Whether this one created it."""
        import sqlite3
        import uuid

        temporary = os.path.join(self.directory, f".{self.name}.{os.getpid()}.{uuid.uuid4().hex}.new")
        try:
            with self._database(f"cannot create {self.name}"):
                db = sqlite3.connect(temporary, isolation_level=None)
                try:
                    db.executescript(_SCHEMA)
                finally:
                    db.close()
            with open(temporary, "rb") as file:
                os.fsync(file.fileno())
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in _NO_HARD_LINKS:
                    raise
                # A file system without hard links (FAT, some network ones):
                # renamed instead; two processes creating it in the same
                # moment then both think they made it (each its own empty store).
                if os.path.exists(self.path):
                    return False
                os.rename(temporary, self.path)
        except OSError as exc:
            raise StateError(f"state_dir {self.directory!r}: cannot create {self.name}: "
                             f"{exc.strerror or exc}") from exc
        finally:
            for leftover in (temporary, temporary + "-journal"):
                try:
                    os.unlink(leftover)
                except OSError:  # (gone, or not ours to remove: never the error the run says)
                    pass
        return True

    @contextmanager
    def _database(self, doing: str):
        """SQLite's errors as `StateError`s that name the state_dir and say
        what to do: a damaged file (a corrupted page: "database disk image
        is malformed", "file is not a database") cannot be trusted for any
        epoch, so the run stops instead of restoring from it."""
        import sqlite3

        try:
            yield
        except sqlite3.DatabaseError as exc:
            text, code = str(exc), getattr(exc, "sqlite_errorname", "")
            # SQLite names a full disk SQLITE_FULL where a write of its files
            # fails, but "disk I/O error" where growing the WAL's shared-memory
            # file does (SQLITE_IOERR_SHMSIZE, at a store's first open on a
            # nearly full disk): told apart by the room its file system has left
            free = _free_bytes(self.directory) if code.startswith("SQLITE_IOERR") else None
            if code == "SQLITE_FULL" or "full" in text or (free is not None and free < _NEARLY_FULL):
                if doing.startswith("cannot write"):
                    raise StateError(
                        f"state_dir {self.directory!r}: the disk is full; this snapshot was not written, "
                        "the previous complete epoch is intact"
                    ) from exc
                left = "" if free is None else f", {free} bytes free"
                raise StateError(f"state_dir {self.directory!r}: {doing}: the disk is full ({text}{left}); "
                                 "make room and run again") from exc
            # (text that is no UTF-8: the store writes only Python's str, so
            # its bytes were changed, in a name of its schema or in a row)
            if code in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or "malformed" in text or \
                    text.startswith("Could not decode to UTF-8"):
                raise StateError(self._damaged(text)) from exc
            raise StateError(f"state_dir {self.directory!r}: {doing}: {text}") from exc
        except UnicodeDecodeError as exc:  # (where Python decodes a name itself: a table's, of the schema)
            raise StateError(self._damaged(f"text that is no UTF-8: {exc}")) from exc

    def _damaged(self, detail: str) -> str:
        return (f"state_dir {self.directory!r}: {self.name} is damaged ({detail}), so none of its "
                "snapshots can be trusted; move the state_dir aside to run this flow afresh "
                "(its to_files output is then written again)")

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._database(f"cannot read {self.name}"):
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        self._db.close()

    # -- which flow ------------------------------------------------------------------

    def claim(self, fingerprint: str, kernels: int, layout: str, placement: str | None = None,
              key_groups: int | None = None, afresh: bool = False) -> None:
        """Bind an empty store to this flow, or check that it is this flow's
        (and intact: see `check_intact`). `layout` names how the snapshots
        are laid out (what the operators put in them: `kernel.operators.
        SNAPSHOT_LAYOUT`): the store only compares it, as text. A cluster's
        process gives its `placement` ("process 1 of 2, 2 cores each"):
        its store file holds only its own kernels' snapshots, so that must
        not change. Another number of `kernels` is a rescaled resume: the
        store keeps the old epochs' kernel counts, and refuses more kernels
        than it has key groups. `key_groups`: those of the generation a new
        one resumes (`_generations.py`; fixed at a flow's first run).
        `afresh`: the run starts afresh (no epoch complete anywhere), so a
        store of another placement that completed nothing is taken over (a
        cluster killed before its first epoch left its files claimed, and a
        cluster of another shape was refused with nothing to resume)."""
        self.check_intact()
        rows = dict(self._query("SELECT key, value FROM meta"))
        if afresh and rows and rows.get("placement") != placement and not self._completed():
            self._update("DELETE FROM snapshots", ())
            self._update("DELETE FROM meta", ())
            rows = {}
        if not rows:
            groups = default_key_groups(kernels) if key_groups is None else key_groups
            self._refuse_more_kernels_than(groups, kernels)
            self._update(
                "INSERT INTO meta (key, value) VALUES (?, ?), (?, ?), (?, ?), (?, ?)",
                ("flow", fingerprint, "kernels", str(kernels), "format", layout, "key_groups", str(groups)),
            )
            if placement is not None:
                self._update("INSERT INTO meta (key, value) VALUES (?, ?)", ("placement", placement))
            self._keep_steps(fingerprint)
            self.kernels, self.key_groups = kernels, groups
            return
        check_meta(self.directory, rows, fingerprint, layout)
        if "steps" not in rows:  # (a store an earlier version made)
            self._keep_steps(fingerprint)
        if rows.get("placement") != placement:
            raise StateError(
                f"state_dir {self.directory!r} was written as {rows.get('placement') or 'one process'} "
                f"and this run is {placement or 'one process'}: a cluster resumes with the same processes "
                "and cores per process (a one-process run may change its number of kernels)"
            )
        groups = int(rows["key_groups"])
        self._refuse_more_kernels_than(groups, kernels)
        if rows.get("kernels") != str(kernels):
            self._update("UPDATE meta SET value = ? WHERE key = 'kernels'", (str(kernels),))
        self.kernels, self.key_groups = kernels, groups

    def _keep_steps(self, fingerprint: str) -> None:
        """The flow's steps in `meta` (`Fingerprint`), for a run of a changed
        flow to be told which step differs."""
        import json

        if getattr(fingerprint, "steps", None) is not None:
            self._update("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                        ("steps", json.dumps(fingerprint.steps)))

    def record_run(self, epoch: int, record: dict) -> None:
        """This run resumes `epoch` (0: afresh) and says `record` of its
        steps (`Node.resume_record`, by step index: what a later run needs
        to know of the run that wrote an epoch where the step's snapshots say
        nothing, its step ended everywhere). Records of runs that resumed
        later epochs go (that line of epochs is abandoned, as
        `discard_after`), and those no kept epoch needs."""
        import json

        runs = _runs(dict(self._query("SELECT key, value FROM meta")))
        oldest = min((e for e, _, _ in self._completed() if e <= epoch), default=epoch)
        needed = max((resumed for resumed in runs if resumed < oldest), default=0)
        for resumed, key in runs.items():
            if not needed <= resumed < epoch:
                self._update("DELETE FROM meta WHERE key = ?", (key,))
        self._update("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    (f"{_RUN}{epoch}", json.dumps(record, sort_keys=True)))

    def recorded_run(self, epoch: int) -> dict | None:
        """What the run that wrote `epoch` said of its steps (`recorded_before`)."""
        return recorded_before(dict(self._query("SELECT key, value FROM meta")), epoch)

    def _refuse_more_kernels_than(self, groups: int, kernels: int) -> None:
        if kernels > groups:
            raise StateError(
                f"state_dir {self.directory!r} has {groups} key groups (fixed at its first run) and this run "
                f"has {kernels} kernels: keyed state moves between kernels by whole groups, so a run can "
                f"have at most {groups} kernels"
            )

    @cached_property
    def kernels(self) -> int:
        """How many kernels the run using this store has (set by `claim`;
        a kernel process's own connection reads what its launcher claimed)."""
        return int(dict(self._query("SELECT key, value FROM meta"))["kernels"])

    @cached_property
    def key_groups(self) -> int:
        return int(dict(self._query("SELECT key, value FROM meta"))["key_groups"])

    def check_intact(self) -> None:
        """SQLite's own structural check of every page, before anything is
        read from the store. A damaged page does not always fail the query
        that reads it: a cell overwritten with garbage can read back as an
        epoch that never was. ~15 ms for a 34 MB store."""
        problems = self._query("PRAGMA quick_check")
        if problems != [("ok",)]:
            # SQLite gives every problem it found, a line each, in one row
            # (after a "*** in database main ***" line), and may add more
            # rows: the error names the first and counts the rest, so that
            # it stays one line however many cells a damaged page held
            found = [line.strip() for row in problems for line in row[0].splitlines()
                     if line.strip() and line.strip() != "*** in database main ***"]
            more = f" and {len(found) - 1} more problem{'s' * (len(found) > 2)}" if len(found) > 1 else ""
            raise StateError(self._damaged(found[0] + more))
        # A byte flipped in a column's name makes another valid schema, which
        # the check passes: the run then stopped at its first query of that
        # column, "cannot read snapshots.sqlite: no such column: blob" (or
        # "cannot write", from a kernel, once the run had started), as if the
        # store were only unreadable. (Another number of columns is not a
        # flipped name: another program's table, refused where it is read.)
        for table, columns in _COLUMNS.items():
            found = tuple(name for _, name, *_ in self._query(f"PRAGMA table_info({table})"))
            if len(found) == len(columns) and tuple(name.lower() for name in found) != columns:
                column, instead = next((f, c) for f, c in zip(found, columns) if f.lower() != c)
                raise StateError(self._damaged(f"its table {table} has a column {column!r} where a snapshot "
                                               f"store has {instead!r}"))

    # -- writing -------------------------------------------------------------------------

    def write(self, epoch: int, kernel: int, blob: bytes) -> None:
        """Make one kernel's snapshot of `epoch` durable (returns after fsync):
        a delta on its snapshot of the epoch before where `blob.is_delta`
        (`kernel.runtime._epochs.DeltaSnapshot`), else whole."""
        import sqlite3

        key = (epoch, kernel, self.kernels)
        with self._database(f"cannot write to {self.name}"), self._db:  # (one transaction: one fsync)
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT OR REPLACE INTO snapshots (epoch, kernel, kernels, crc, blob) VALUES (?, ?, ?, ?, ?)",
                (*key, zlib.crc32(blob), sqlite3.Binary(blob)))
            if getattr(blob, "is_delta", False):
                self._db.execute("INSERT OR REPLACE INTO deltas VALUES (?, ?, ?)", key)
            else:
                self._db.execute("DELETE FROM deltas WHERE epoch = ? AND kernel = ? AND kernels = ?", key)

    def mark_complete(self, epoch: int, final: bool = False) -> None:
        """Every kernel has made `epoch` durable: it may be restored. Older
        epochs than the two newest complete ones (and a third where their
        chains share links: `_fallback`) are deleted, but the links their
        chains need, and the FINAL snapshots of kernel counts none of them has."""
        self._write("INSERT OR REPLACE INTO complete (epoch, final, kernels) VALUES (?, ?, ?)",
                    (epoch, int(final), self.kernels))
        kept = self._query("SELECT epoch, kernels FROM complete ORDER BY epoch DESC LIMIT ?",
                           (_KEEP_COMPLETE,))
        oldest = kept[-1][0]
        shared = self._shares_links(oldest, kept[0][0])
        fallback = self._fallback(oldest) if shared else None
        if fallback is not None:
            kept.append(fallback)
        counts = sorted({k for _, k in kept})
        self._retire_before(kept[-1][0])  # FINAL is larger: kept
        marks = ",".join("?" * len(counts))
        self._write(f"DELETE FROM snapshots WHERE epoch = ? AND kernels NOT IN ({marks})", (FINAL, *counts))
        self._write("DELETE FROM complete WHERE epoch < ? AND epoch != ?", (oldest, kept[-1][0]))
        # Other generations are superseded once this one can fall back on
        # its own: two complete epochs whose chains share nothing, or a
        # third kept for them (a new generation's first epochs are one
        # chain: its base failing its checksum would otherwise leave no
        # epoch to resume anywhere), or its run has finished.
        intact_fallback = not shared or fallback is not None or final
        if len(kept) >= _KEEP_COMPLETE and intact_fallback and not self._retired:
            self._retire_other_generations()

    def _shares_links(self, oldest: int, newest: int) -> bool:
        """Whether complete epoch `newest` may be a delta on `oldest`'s chain."""
        return bool(self._query("SELECT 1 FROM deltas WHERE epoch > ? AND epoch <= ? LIMIT 1",
                                (oldest, newest)))

    def _fallback(self, oldest: int) -> tuple[int, int] | None:
        """(epoch, kernels) of a third complete epoch to keep where the two
        newest share links of their chains (`_shares_links`): the newest
        complete one before that chain's base, so that a shared base or
        delta failing its checksum leaves an intact epoch to fall back to
        (whole snapshots keep two independent ones). None where none is
        older."""
        floor = min([oldest, *(self._base_of(oldest, kernel, kernels) or oldest for kernel, kernels in
                               self._query("SELECT kernel, kernels FROM deltas WHERE epoch = ?", (oldest,)))])
        rows = self._query("SELECT epoch, kernels FROM complete WHERE epoch < ? ORDER BY epoch DESC LIMIT 1",
                           (floor,))
        return rows[0] if rows else None

    def _retire_before(self, oldest: int) -> None:
        """Delete the snapshots older than epoch `oldest`, but those the
        chain of a kernel's delta at `oldest` needs (back to its base; the
        chains of later epochs start there or later)."""
        bases = {(kernel, kernels): self._base_of(oldest, kernel, kernels) for kernel, kernels in
                 self._query("SELECT kernel, kernels FROM deltas WHERE epoch = ?", (oldest,))}
        if not bases:
            self._write("DELETE FROM snapshots WHERE epoch < ?", (oldest,))
        else:
            older = self._query("SELECT DISTINCT kernel, kernels FROM snapshots WHERE epoch < ?", (oldest,))
            for kernel, kernels in older:
                self._write("DELETE FROM snapshots WHERE epoch < ? AND kernel = ? AND kernels = ?",
                            (bases.get((kernel, kernels), oldest), kernel, kernels))
        self._forget_gone_deltas()

    def _forget_gone_deltas(self) -> None:
        self._write("DELETE FROM deltas WHERE NOT EXISTS (SELECT 1 FROM snapshots s WHERE "
                    "s.epoch = deltas.epoch AND s.kernel = deltas.kernel AND s.kernels = deltas.kernels)", ())

    def _base_of(self, epoch: int, kernel: int, kernels: int) -> int:
        """The epoch of the whole snapshot a kernel's delta at `epoch` is
        built on (0: none left, a damaged chain)."""
        [(base,)] = self._query(
            "SELECT max(epoch) FROM snapshots s WHERE kernel = ? AND kernels = ? AND epoch < ? AND NOT "
            "EXISTS (SELECT 1 FROM deltas d WHERE d.epoch = s.epoch AND d.kernel = s.kernel "
            "AND d.kernels = s.kernels)",
            (kernel, kernels, epoch))
        return base or 0

    def discard_after(self, epoch: int) -> None:
        """The run resumes from `epoch` (0: afresh), older than the store's
        newest complete one when that failed its checksum: the epochs past
        it belong to a line of epochs no run will continue. Their `complete`
        marks go first, then their snapshots. Left standing, a mark would
        pair a snapshot this run writes under the same epoch number with
        another kernel's from the abandoned line (state of two different
        cuts, restored together: records lost or published twice), and
        `mark_complete` would keep the abandoned marks as the newest two and
        delete this run's own. FINAL snapshots stay when resuming (a kernel
        that had ended by `epoch` is restored from its FINAL one) and go
        with a fresh start."""
        self._update("DELETE FROM complete WHERE epoch > ?", (epoch,))
        if epoch:
            self._update("DELETE FROM snapshots WHERE epoch > ? AND epoch < ?", (epoch, FINAL))
        else:
            self._update("DELETE FROM snapshots WHERE 1", ())
        self._forget_gone_deltas()

    def _retire_other_generations(self) -> None:
        """This store's generation has two complete epochs of its own: every
        other generation's files here are superseded (`_generations.py`)."""
        from ._generations import generation_of, retire_others

        self._retired = True
        mine = generation_of(self.name)
        if mine is None:
            return
        gone = retire_others(self.directory, mine)
        if gone:
            log.info("state_dir %s: removed %s, superseded by %s", self.directory, ", ".join(gone), self.name)

    def _write(self, sql: str, args: tuple) -> None:
        """A row of a snapshot or of an epoch's mark, or the pruning after
        one: where the disk is full, "this snapshot was not written, the
        previous complete epoch is intact" (`_database`)."""
        with self._database(f"cannot write to {self.name}"):
            self._db.execute(sql, args)

    def _update(self, sql: str, args: tuple) -> None:
        """A row a run writes as it starts (`claim`, `record_run`,
        `discard_after`), no snapshot: where the disk is full, "cannot
        update snapshots.sqlite: the disk is full ...; make room and run
        again" (it said "this snapshot was not written", which none was)."""
        with self._database(f"cannot update {self.name}"):
            self._db.execute(sql, args)

    # -- reading -------------------------------------------------------------------------

    def completed(self) -> list[tuple[int, bool]]:
        """(epoch, final) of the complete epochs, newest first."""
        return [(e, bool(f)) for e, f, _ in self._completed()]

    def _completed(self) -> list[tuple[int, int, int]]:
        return self._query("SELECT epoch, final, kernels FROM complete ORDER BY epoch DESC")

    def snapshot_for(self, epoch: int, kernel: int, *, as_parts: bool = False) -> bytes | Parts:
        """`kernel`'s snapshot of `epoch` (written by a run of this store's
        kernel count): its own, or its FINAL one when it had ended before
        that epoch (checksum checked)."""
        return self._read_for(epoch, kernel, self.kernels, as_parts)

    def read(self, epoch: int, kernel: int, kernels: int | None = None, *,
             as_parts: bool = False) -> bytes | Parts:
        """A kernel's whole snapshot of `epoch` (checksums checked):
        CorruptSnapshot where it, or a link of its chain, fails or is missing.
        `as_parts`: a snapshot put together from a chain comes as its `Parts`
        (`state/_deltas.py`), for a consumer in this process, who turns
        either form into the parts with `kernel.runtime._epochs.snapshot_parts`."""
        kernels = self.kernels if kernels is None else kernels
        chain = self._chain(epoch, kernel, kernels)
        if len(chain) == 1:
            blob = self._read_one(epoch, kernel, kernels)
            # (a delta whose row in `deltas` was lost reads as a whole snapshot:
            # its restore failed, "'KeyedDelta' object is not iterable"; the
            # class's name in its bytes is a cheap first look, confirmed by
            # unpickling only where found)
            if _DELTA_NAME in blob:
                from ._deltas import blob_holds_deltas

                if blob_holds_deltas(blob):
                    raise CorruptSnapshot(
                        f"{self.name}: kernel {kernel}'s snapshot at epoch {epoch} holds deltas, and the "
                        "store has no record of the chain they apply to (its record of which snapshots are "
                        "deltas is damaged)")
            return blob
        from ._deltas import BrokenChain, materialise, materialised_parts

        blobs = []
        for link in chain:
            try:
                blobs.append(self._read_one(link, kernel, kernels))
            except CorruptSnapshot as exc:
                raise CorruptSnapshot(f"{exc} (a link of the chain of deltas that kernel {kernel}'s "
                                      f"snapshot at epoch {epoch} is built on: epochs {chain[0]} to "
                                      f"{epoch})") from None
        try:
            return materialised_parts(blobs) if as_parts else materialise(blobs)
        except PASSES_THROUGH:
            raise
        except BrokenChain as exc:  # (falls back as a link failing its checksum does)
            raise CorruptSnapshot(f"{self.name}: kernel {kernel}'s snapshot at epoch {epoch} cannot be built "
                                  f"from epochs {chain[0]} to {epoch}: {exc} (the store's record of which "
                                  "snapshots are deltas is damaged)") from None
        except BaseException as exc:  # (as `unpickled_part`: a class gone, anything its __setstate__ raises)
            raise StateError(
                f"state_dir {self.directory!r}: kernel {kernel}'s snapshot at epoch {epoch} is a base and "
                f"the deltas after it (epochs {chain[0]} to {epoch}), and a step's keyed state in them does "
                f"not read back ({type(exc).__name__}: {exc}): every class in it must be importable under "
                "the name it had when the run that wrote it pickled it (a class renamed or moved since: give "
                "it back its name to resume, or move the state_dir aside to run afresh)") from exc

    def _chain(self, epoch: int, kernel: int, kernels: int) -> list[int]:
        """The epochs whose snapshots make a kernel's whole one of `epoch`:
        itself where it is whole, else back to its base, every epoch between."""
        if not self._query("SELECT 1 FROM deltas WHERE epoch = ? AND kernel = ? AND kernels = ?",
                           (epoch, kernel, kernels)):
            return [epoch]
        base = self._base_of(epoch, kernel, kernels)
        if not base:
            raise CorruptSnapshot(f"{self.name}: the snapshot of kernel {kernel} at epoch {epoch} is a delta "
                                  "and no whole snapshot before it is left to build it on")
        return list(range(base, epoch + 1))

    def _read_one(self, epoch: int, kernel: int, kernels: int) -> bytes:
        rows = self._query("SELECT crc, blob FROM snapshots WHERE epoch = ? AND kernel = ? AND kernels = ?",
                           (epoch, kernel, kernels))
        at = "its end (final)" if epoch == FINAL else f"epoch {epoch}"  # (not FINAL's number)
        if not rows:
            raise CorruptSnapshot(f"{self.name} has no snapshot of kernel {kernel} at {at}")
        [(crc, blob)] = rows
        if zlib.crc32(blob) != crc:
            raise CorruptSnapshot(f"{self.name}: the snapshot of kernel {kernel} at {at} fails its checksum")
        return bytes(blob)

    def _read_for(self, epoch: int, kernel: int, kernels: int, as_parts: bool) -> bytes | Parts:
        try:
            return self.read(epoch, kernel, kernels, as_parts=as_parts)
        except CorruptSnapshot:
            has_own = self._query("SELECT 1 FROM snapshots WHERE epoch = ? AND kernel = ? AND kernels = ?",
                                  (epoch, kernel, kernels))
            if has_own:
                raise
            # that kernel had ended before this epoch
            return self.read(FINAL, kernel, kernels, as_parts=as_parts)

    def epoch_snapshots(self, epoch: int, kernels: int, *, as_parts: bool = False) -> list[bytes | Parts]:
        """Every one of `kernels` kernels' snapshot of `epoch` (its FINAL one
        where it had ended before), checksums checked: CorruptSnapshot for
        one that fails or is missing. (`as_parts`: see `read`.)"""
        return [self._read_for(epoch, k, kernels, as_parts) for k in range(kernels)]

    def latest(self, kernels: int | None = None, *,
               as_parts: bool = False) -> tuple[int, bool, list[bytes | Parts]] | None:
        """The newest complete epoch whose every kernel's snapshot reads back
        intact: (epoch, final, blobs by kernel, as many as the run that wrote
        it had), or None (start afresh). A corrupt one is skipped with a
        warning. (`kernels` is not needed: each epoch knows its own.)"""
        completed = self._completed()
        for epoch, final, count in completed:
            try:
                return epoch, bool(final), self.epoch_snapshots(epoch, count, as_parts=as_parts)
            except CorruptSnapshot as exc:
                log.warning("state_dir %s: %s; falling back to the previous complete epoch",
                            self.directory, exc)
        if completed:
            log.warning("state_dir %s: no complete epoch reads back intact; starting afresh", self.directory)
        return None
