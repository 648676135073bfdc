"""The coordinator's catalog: executors, jobs (with their pipeline files),
and the tables topics, publications and subscriptions that jobs
publishing streams to each other will fill, kept in SQLite so that a
restarted coordinator loses nothing.

Every change is committed at once (WAL, synchronous=FULL): the catalog is
small and changes a few times per job, so durability costs nothing that
matters.

Every SQL statement runs on one thread of the catalog's own, never on the
coordinator's event loop: `call(fn, ...)` runs `fn` there in one
transaction and is awaited (or not: the job master's own writes), in the
order the calls were made. A slow disk, or the database locked by another
program (an operator's `sqlite3` with a write transaction open, a backup),
then holds up only what needs the catalog: it used to freeze the whole
coordinator, its executors' heartbeats unread (lost, their jobs
restarted) and every client's request unanswered. A call waits for such a
lock up to `timeout` seconds from when it was made (--catalog-timeout),
then fails with `CatalogBusy`, naming the file and who holds it.
The methods below that take no `call` are that thread's (or, with nothing
else using the catalog, a test's).
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import fcntl
import hashlib
import json
import os
import socket
import sqlite3
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kernel._open_files import pids_holding
from kernel.dataflow._errors import KernelError
from kernel.system._wire import ACTIVE, TERMINAL, answer_by


class CatalogError(KernelError):
    """The catalog's file cannot be opened as one (damaged, not a database)."""


class CatalogBusy(CatalogError):
    """The catalog stayed locked by another program past the timeout, or
    the calls queued before this one held its thread till then."""


_SQLITE_PATH = 512  # SQLite's longest path, plus one (MAX_PATHNAME, its Unix files)
CATALOG_TIMEOUT = 10.0  # seconds a catalog call waits for a lock another program holds
HOLDERS_FRESH = 1.0  # seconds the catalog's lock holders, once found, are named without a new scan
_BUSY_STEP_MS = 100  # SQLite's own busy wait, between our checks of the deadline and of close()


STATES = ACTIVE + TERMINAL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executors (
    id TEXT PRIMARY KEY, host TEXT NOT NULL, cores INTEGER NOT NULL,
    state TEXT NOT NULL, registered REAL NOT NULL, last_seen REAL NOT NULL, timeout REAL);
CREATE TABLE IF NOT EXISTS pipelines (
    hash TEXT PRIMARY KEY, filename TEXT NOT NULL, content BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, name TEXT NOT NULL, flow TEXT NOT NULL,
    pipeline TEXT NOT NULL REFERENCES pipelines(hash),
    processes INTEGER NOT NULL, cores INTEGER NOT NULL, executors TEXT,
    state_dir TEXT, epoch_interval REAL, max_restarts INTEGER NOT NULL,
    status TEXT NOT NULL, message TEXT, restarts INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0, placement TEXT NOT NULL DEFAULT '[]',
    ran_on TEXT NOT NULL DEFAULT '[]', unstopped TEXT NOT NULL DEFAULT '{}',
    submitted REAL NOT NULL, started REAL, ended REAL,
    shared_state INTEGER NOT NULL DEFAULT 0, request TEXT);
-- Streams between jobs (issue 18 fills these): a topic a job publishes,
-- where each of its processes serves it, and who reads it.
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY, job TEXT NOT NULL, created REAL NOT NULL, schema TEXT);
CREATE TABLE IF NOT EXISTS publications (
    topic TEXT NOT NULL, job TEXT NOT NULL, process INTEGER NOT NULL, address TEXT NOT NULL,
    PRIMARY KEY (topic, job, process));
CREATE TABLE IF NOT EXISTS subscriptions (
    topic TEXT NOT NULL, job TEXT NOT NULL, process INTEGER NOT NULL,
    PRIMARY KEY (topic, job, process));
"""
# The catalog's own identity (key 'id'), made once with it: job ids are only
# unique within one catalog, and an executor told another catalog's id puts
# the earlier one's job logs and directories aside (`_executor.py`). Made
# apart from the schema (`Catalog._own_identity`): an older catalog, all of
# whose tables are there, opened while another program holds its lock.
_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


@dataclass
class Job:
    id: str
    name: str  # the pipeline file's name and the flow: "wordcount.py:flow"
    flow: str
    pipeline: str  # the file's SHA-256 (pipelines table)
    processes: int
    cores: int
    executors: list[str] | None  # the executors asked for, or None: the coordinator picks
    state_dir: str | None
    epoch_interval: float | None
    max_restarts: int
    shared_state: bool = False  # --shared-state-dir: one directory every executor's machine sees
    status: str = "submitted"
    message: str | None = None
    restarts: int = 0
    attempt: int = 0
    # process p of the current attempt: {"executor": id, "host": h, "port": n}
    placement: list[dict] = field(default_factory=list)
    ran_on: list[str] = field(default_factory=list)  # every executor that ran it (their logs)
    submitted: float = 0.0
    started: float | None = None
    ended: float | None = None
    seq: int = 0
    # the client's id for its submit request: sent again after a reply that
    # was lost, it finds this job rather than submitting a second one
    request: str | None = None
    # executor id -> cores: the executors that may still run a process of
    # this job's (its stop not confirmed there: `JobMaster._unstopped`), kept
    # so that a restarted coordinator still waits for them
    unstopped: dict[str, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def filename(self) -> str:
        """The pipeline file's name as this job was submitted (`name` is
        FILE:FLOW). Not the pipelines table's: it keeps a text once, by its
        hash, under the name it came with first, and a job of the same text
        under another name (`b.py`, after `a.py`) ran as `a.py`: its
        `__file__`, its messages, its log."""
        return self.name.removesuffix(f":{self.flow}")


@dataclass
class Executor:
    id: str
    host: str
    cores: int
    state: str  # "up" (connected), "reconnecting", "leaving", "lost"
    registered: float
    last_seen: float
    # the executor timeout it was told when it registered, which its fencing
    # and its job processes' leases follow (None: a catalog written before)
    timeout: float | None = None


_JSON_FIELDS = ("executors", "placement", "ran_on", "unstopped")


def job_row(job: Job) -> dict:
    """The job as its row (a deep copy)."""
    row = asdict(job)
    for key in _JSON_FIELDS:
        row[key] = json.dumps(row[key])
    return row


def _hold(lock_path: Path, catalog: Path) -> tuple:
    """One coordinator per catalog: an exclusive lock beside it, held until
    close (or the process's end, even by SIGKILL). A second coordinator on
    the same --data ran as well, took the first's connected executors for
    ones that did not come back, and wrote them lost and their jobs
    restarting into the catalog, under the first: restarted, that one then
    stopped the running jobs and started them again.
    The lock file goes with its directory (an `rm -rf` of --data while the
    coordinator runs), and a second one then took a new one: the data
    directory is claimed as well by a name that no file holds (`_claim`).
    (lock file, claim) to close at the end."""
    lock = open(lock_path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise CatalogError(f"the catalog {catalog} is in use by another coordinator (pid {holder})") from None
    try:
        claim = _claim(catalog.parent)
    except BaseException:
        lock.close()
        raise
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock, claim


def _claim(data_dir: Path) -> _Claim | None:
    """The data directory claimed for this process by a listening socket in
    Linux's abstract namespace, named after the directory's absolute path:
    no file, so deleting the directory does not free it, and the kernel
    frees it when the process ends (SIGKILL too). A second coordinator is
    refused, naming the first (its pid, from the socket's credentials).
    (Elsewhere, and across network namespaces, the lock file alone.)"""
    if not sys.platform.startswith("linux"):
        return None
    # (its bytes: a name that is not UTF-8, a surrogate escape here, failed
    # `str.encode` and the coordinator's start with a traceback)
    where = os.fsencode(os.path.abspath(os.path.realpath(data_dir)))
    name = b"\0streamkernel-coordinator-" + hashlib.sha256(where).hexdigest()[:40].encode()
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(name)
        claim.listen(16)
        return _Claim(claim)
    except OSError as exc:
        claim.close()
        if exc.errno != errno.EADDRINUSE:
            return None  # (no such namespace here: the lock file alone)
    holder, until = "?", time.monotonic() + 1.0
    while True:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                probe.settimeout(1.0)
                probe.connect(name)
                holder = str(struct.unpack("3i", probe.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0])
        except BlockingIOError:  # (its queue full for now: a Unix socket does not wait, even with a timeout)
            if time.monotonic() < until:
                time.sleep(0.01)
                continue
        except OSError:
            pass
        break
    # (moved: the claim is the path's it was started on)
    raise CatalogError(f"the data directory {data_dir} is in use by another coordinator (pid {holder}), "
                       "though its catalog.lock is gone (deleted or moved while that one runs): "
                       "stop it first")


class _Claim:
    """`_claim`'s listening socket, and a thread that takes each connection
    to it (a refused coordinator's, asking who holds it) and closes it: left
    in its queue, two filled it, and every coordinator refused after them
    named the holder "pid ?"."""

    def __init__(self, listening: socket.socket) -> None:
        self._socket = listening
        self._thread = threading.Thread(target=self._answer, name="data-directory-claim", daemon=True)
        self._thread.start()

    def _answer(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # (shut down, closed: `close`)
                return
            connection.close()

    def close(self) -> None:
        try:
            self._socket.shutdown(socket.SHUT_RDWR)  # (wakes the thread's accept)
        except OSError:
            pass
        self._socket.close()
        self._thread.join(timeout=1.0)


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the file at `path`; None where there is none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def holders(path: Path) -> list[str]:
    """"pid N (name)" of each other process that has the database `path`
    (or its -wal, -shm) open, as far as /proc lets us see."""
    found = []
    for pid in pids_holding({str(path), f"{path}-wal", f"{path}-shm"}):
        try:
            with open(f"/proc/{pid}/comm") as comm:
                found.append(f"pid {pid} ({comm.read().strip()})")
        except OSError:
            continue  # (gone meanwhile)
    return found


def _is_busy(exc: sqlite3.Error) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


class Catalog:
    def __init__(self, data_dir: str | Path, timeout: float = CATALOG_TIMEOUT) -> None:
        self.path = Path(data_dir) / "catalog.sqlite"
        self.timeout = timeout
        self._db = None
        # one thread, so that calls run one at a time, in the order made
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="catalog")
        self._closing = threading.Event()
        self._closed = False
        self._holders_lock = threading.Lock()
        # set while a call waits for a lock another program holds (`_begin`):
        # a call refused in the queue behind it says who; behind calls that
        # are merely many or slow, that it was the queue (`_busy`)
        self._blocked = threading.Event()
        self._holders_found: tuple[float | None, str] = (None, "")  # (when, who): `_holders`
        # every topic with its publisher and subscribers (`_topics.listing`),
        # as of the last call that changed them: `status` answers without a call
        self.listing: list[dict] = []
        # A catalog that is not a database (a damaged file, another file at
        # that name) or a --data that is not a directory one can write in:
        # one line saying which file and why (it was a raw sqlite3 or OSError
        # traceback from the coordinator's start).
        self._lock = self._claim = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock, self._claim = _hold(self.path.with_name("catalog.lock"), self.path)
            self._pool.submit(self._open).result()
        except (sqlite3.Error, OSError, CatalogError) as exc:
            if self._db is not None:
                self._pool.submit(self._db.close).result()
            self._pool.shutdown()
            if self._lock is not None:
                self._lock.close()
                if self._claim is not None:
                    self._claim.close()
            if isinstance(exc, CatalogError):
                raise
            # (SQLite's Unix files take a path of fewer than _SQLITE_PATH
            # bytes: a longer one said "unable to open database file" alone)
            size = len(os.fsencode(os.path.abspath(self.path)))
            why = (f" (SQLite opens no path of {_SQLITE_PATH} bytes or more: this one has {size})"
                   if isinstance(exc, sqlite3.OperationalError) and size >= _SQLITE_PATH else "")
            raise CatalogError(f"the catalog {self.path} cannot be used: {exc}{why}") from exc

    def _open(self) -> None:
        """(On the catalog's thread: its connection is made there.)"""
        # (check_same_thread off only for the tests that read and write the
        # catalog directly while nothing else does; the coordinator uses it
        # on this thread alone. A lock another program holds is waited for
        # in steps, `_begin`, up to each call's deadline.)
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=_BUSY_STEP_MS / 1000,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        if "shared_state" not in columns:  # a catalog written before --shared-state-dir
            self._db.execute("ALTER TABLE jobs ADD COLUMN shared_state INTEGER NOT NULL DEFAULT 0")
        if "request" not in columns:  # (written before submits carried one)
            self._db.execute("ALTER TABLE jobs ADD COLUMN request TEXT")
        if "unstopped" not in columns:  # (written before a restarted coordinator knew of them)
            self._db.execute("ALTER TABLE jobs ADD COLUMN unstopped TEXT NOT NULL DEFAULT '{}'")
        if "timeout" not in {row[1] for row in self._db.execute("PRAGMA table_info(executors)")}:
            self._db.execute("ALTER TABLE executors ADD COLUMN timeout REAL")  # (written before it)
        self.listing = self.topics()
        self.identity = self._own_identity()
        self._file = _identity(self.path)

    def _own_identity(self) -> str | None:
        """The catalog's id (`meta`), made now for a catalog that has none (a
        new one, or one written before it: a backup restored keeps its own).
        Read first: a write here waited on a lock another program held (the
        coordinator then did not start); with one held as an older catalog
        gets its id, None for this run (executors told no catalog)."""
        if self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
            row = self._db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()
            if row is not None:
                return row[0]
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(_META)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('id', ?)", (os.urandom(8).hex(),))
                row = self._db.execute("SELECT value FROM meta WHERE key = 'id'").fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise
            return None
        return row[0]

    def gone(self) -> bool:
        """Is the file at `path` no longer the one opened (deleted, its
        directory removed, replaced)? SQLite writes on into a deleted file,
        each write succeeding: what was written since is lost all the same."""
        return _identity(self.path) != self._file

    def close(self) -> None:
        """Run the calls already made (a lock held by another program is not
        waited for any more: they fail at once), then close the connection
        on its thread."""
        if self._closed:
            return
        self._closed = True
        self._closing.set()
        self._pool.submit(self._db.close)
        self._pool.shutdown(wait=True)
        self._lock.close()
        if self._claim is not None:
            self._claim.close()

    # -- calls from the event loop ------------------------------------------------------

    def at_once(self, fn, *args):
        """`fn(*args)` on the catalog's thread, waited for: for the
        coordinator's start only, before it serves anyone."""
        return self._pool.submit(fn, *args).result()

    def call(self, fn, *args, write: bool = False, topics: bool = False, own: bool = False) -> asyncio.Future:
        """`fn(*args)` run on the catalog's thread in one transaction (BEGIN
        IMMEDIATE where it writes, so that what it reads is what it writes
        on: no other write comes between), after every call made before.
        `topics`: it may change the topics, `listing` is read again (a
        topic's name: it changes that one alone, whose entry alone is read).
        A call made for a request whose sender waits less than `timeout`
        for its answer (`_wire.answer_by`) fails (CatalogBusy) by then, even
        while still queued behind calls that wait for a lock; `own`: the
        coordinator's own write (the job master's), not bounded so."""
        if self._closed:
            raise CatalogError(f"the catalog {self.path} is closed (the coordinator stops)")
        made = time.monotonic()
        deadline, asker = made + self.timeout, None if own else answer_by.get()
        bounded = asker is not None and asker < deadline
        if bounded:  # (the request's sender waits less: it is answered before it gives up)
            deadline = max(made + _BUSY_STEP_MS / 1000, asker)
        inner = self._pool.submit(self._run, (deadline, deadline - made, bounded), write, topics, fn, *args)
        if not bounded:
            return asyncio.wrap_future(inner)
        loop = asyncio.get_running_loop()
        outer = loop.create_future()

        def settle(done) -> None:  # (on the loop)
            if outer.done():
                return
            if done.cancelled():  # never ran: the calls before it held the catalog's thread till then
                # (its holder found off the loop: a scan of /proc, ~0.1 s beside a
                # process with many open files, froze the coordinator for each)
                loop.run_in_executor(None, self._busy, deadline - made, True, True).add_done_callback(refuse)
            elif done.exception() is not None:
                outer.set_exception(done.exception())
            else:
                outer.set_result(done.result())

        def refuse(found) -> None:  # (on the loop: `_busy`'s CatalogBusy, made on another thread)
            if outer.done():
                return
            if found.cancelled():
                outer.cancel()
            else:
                outer.set_exception(found.exception() or found.result())

        inner.add_done_callback(lambda done: loop.call_soon_threadsafe(settle, done))
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), inner.cancel)  # (only if not begun)
        outer.add_done_callback(lambda _: timer.cancel())
        # (cancelled, the request's task with it: not run later, if not begun,
        # as asyncio's wrap of an unbounded call; it ran once the calls before it were done)
        outer.add_done_callback(lambda done: done.cancelled() and inner.cancel())
        return outer

    def _run(self, wait: tuple[float, float, bool], write: bool, topics: bool, fn, *args):
        deadline = wait[0]
        db = self._db
        try:
            self._begin("BEGIN IMMEDIATE" if write else "BEGIN", deadline)
            try:
                result = fn(*args)
                # (the listing read inside the transaction: read after the
                # COMMIT, its failure reported a write that was made as failed)
                listing = None if not topics else self.topics() if topics is True else \
                    self._listing_with(topics)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            if listing is not None:
                self.listing = listing
            return result
        except sqlite3.Error as exc:
            if _is_busy(exc):
                raise self._busy(*wait[1:]) from None
            raise

    def _holders(self) -> str:
        """Who holds the catalog (`holders`), found again at most every
        HOLDERS_FRESH seconds (off the event loop: a scan of /proc takes
        ~0.1 s beside a process with many open files, and many calls
        refused at once each scanned)."""
        with self._holders_lock:
            found, who = self._holders_found
            if found is None or time.monotonic() - found >= HOLDERS_FRESH:
                who = ", ".join(holders(self.path)) or "another program"
                self._holders_found = time.monotonic(), who
            return who

    def _begin(self, statement: str, deadline: float) -> None:
        try:
            while True:
                try:
                    self._db.execute(statement)
                    return
                except sqlite3.OperationalError as exc:
                    # (SQLite waited _BUSY_STEP_MS: again, unless past the deadline or closing)
                    if not _is_busy(exc) or time.monotonic() >= deadline or self._closing.is_set():
                        raise
                    self._blocked.set()
        finally:
            self._blocked.clear()

    def _busy(self, waited: float, bounded: bool, queued: bool = False) -> CatalogBusy:
        """The refusal of a call that waited `waited` s: for a lock another
        program holds (SQLite said so, or the call before it in the queue
        waits for one), or, `queued` behind calls that hold no such wait,
        for the queue alone (it said "another program" all the same)."""
        why = "as long as the request's sender waits for its answer" if bounded else ""
        if queued and not self._blocked.is_set():
            why = f"; {why}" if why else ""
            return CatalogBusy(f"the catalog is busy: the calls queued before this one took more than "
                               f"{round(waited, 2):g} s (no other program holds it{why})")
        who = self._holders()
        why = f" ({why})" if why else ""
        return CatalogBusy(f"database is locked: {who} has held it for more than {round(waited, 2):g} s{why}")

    # -- pipelines ------------------------------------------------------------------

    def add_pipeline(self, digest: str, filename: str, content: bytes) -> None:
        self._db.execute("INSERT OR IGNORE INTO pipelines VALUES (?, ?, ?)", (digest, filename, content))

    def pipeline(self, digest: str) -> tuple[str, bytes]:
        filename, content = self._db.execute(
            "SELECT filename, content FROM pipelines WHERE hash = ?", (digest,)).fetchone()
        return filename, bytes(content)

    def pipelines(self, digests) -> dict[str, tuple[str, bytes]]:
        """`pipeline` of each of `digests` that the catalog holds."""
        return {digest: self.pipeline(digest) for (digest,) in self._db.execute(
            f"SELECT hash FROM pipelines WHERE hash IN ({', '.join('?' * len(digests))})", tuple(digests))}

    # -- jobs -----------------------------------------------------------------------

    def new_job(self, **fields) -> Job:
        seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
        job = Job(id=f"job-{seq}", seq=seq, submitted=time.time(), **fields)
        row = asdict(job)
        for key in _JSON_FIELDS:
            row[key] = json.dumps(row[key])
        names = ", ".join(row)
        self._db.execute(f"INSERT INTO jobs ({names}) VALUES ({', '.join('?' * len(row))})",
                         tuple(row.values()))
        return job

    def save(self, job: Job) -> None:
        self.save_row(job_row(job))

    def save_row(self, row: dict) -> None:
        """(`job_row`'s row, taken on the event loop: the Job itself may
        change there while this thread writes it)"""
        sets = ", ".join(f"{k} = ?" for k in row if k != "id")
        self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?",
                         (*(v for k, v in row.items() if k != "id"), row["id"]))

    def jobs(self) -> list[Job]:
        cursor = self._db.execute("SELECT * FROM jobs ORDER BY seq")
        names = [d[0] for d in cursor.description]
        found = []
        for values in cursor.fetchall():
            row = dict(zip(names, values))
            for key in _JSON_FIELDS:
                row[key] = json.loads(row[key]) if row[key] is not None else None
            row["shared_state"] = bool(row["shared_state"])
            found.append(Job(**row))
        return found

    # -- executors ------------------------------------------------------------------

    def save_executor(self, executor: Executor) -> None:
        self._db.execute("INSERT OR REPLACE INTO executors VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (executor.id, executor.host, executor.cores, executor.state,
                          executor.registered, executor.last_seen, executor.timeout))

    def executors(self) -> list[Executor]:
        return [Executor(*row) for row in self._db.execute("SELECT * FROM executors ORDER BY registered")]

    # -- as data ----------------------------------------------------------------------

    def topics(self) -> list[dict]:
        from kernel.system._topics import listing  # (it imports this module)

        return listing(self)

    def _listing_with(self, name: str) -> list[dict]:
        """(On the catalog's thread.) `listing` with topic `name`'s entry read
        again (or gone), the others as they are: in name order, as `topics`."""
        from kernel.system._topics import listing

        others = [t for t in self.listing if t["name"] != name]
        entry = listing(self, name)
        if entry:
            bisect.insort(others, entry[0], key=lambda t: t["name"])
        return others

    def forget_topics_of(self, job_id: str) -> None:
        """A job of the system has ended: the topics it published go (a
        subscriber looking one up then waits for a publisher, rather than
        dialling addresses nobody serves)."""
        names = [n for (n,) in self._db.execute("SELECT name FROM topics WHERE job = ?", (job_id,))]
        for name in names:
            self._db.execute("DELETE FROM topics WHERE name = ?", (name,))
            self._db.execute("DELETE FROM publications WHERE topic = ?", (name,))
            self._db.execute("DELETE FROM subscriptions WHERE topic = ?", (name,))
        self._db.execute("DELETE FROM subscriptions WHERE job = ?", (job_id,))

    def table(self, name: str) -> list[dict]:
        cursor = self._db.execute(f"SELECT * FROM {name}")  # (names from TABLES only)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


TABLES = ("executors", "jobs", "topics", "publications", "subscriptions")
