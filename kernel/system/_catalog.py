"""The coordinator's catalog: executors, jobs (with their pipeline files),
and the tables topics, publications and subscriptions that jobs
publishing streams to each other will fill, kept in SQLite so that a
restarted coordinator loses nothing.

Every change is committed at once (WAL, synchronous=FULL): the catalog is
small and changes a few times per job, so durability costs nothing that
matters. `snapshot()` reads the whole catalog as plain data (the `catalog`
request, `status --json`).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kernel.dataflow._errors import KernelError


class CatalogError(KernelError):
    """The catalog's file cannot be opened as one (damaged, not a database)."""


ACTIVE = ("submitted", "starting", "running", "restarting")
TERMINAL = ("completed", "failed", "killed")
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
    ran_on TEXT NOT NULL DEFAULT '[]',
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

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


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


_JSON_FIELDS = ("executors", "placement", "ran_on")


def _hold(lock_path: Path, catalog: Path):
    """One coordinator per catalog: an exclusive lock beside it, held until
    close (or the process's end, even by SIGKILL). A second coordinator on
    the same --data ran as well, took the first's connected executors for
    ones that did not come back, and wrote them lost and their jobs
    restarting into the catalog, under the first: restarted, that one then
    stopped the running jobs and started them again."""
    lock = open(lock_path, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        holder = lock.read().strip() or "?"
        lock.close()
        raise CatalogError(f"the catalog {catalog} is in use by another coordinator (pid {holder})") from None
    lock.truncate(0)
    lock.write(str(os.getpid()))
    lock.flush()
    return lock


class Catalog:
    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / "catalog.sqlite"
        self._db = None
        # A catalog that is not a database (a damaged file, another file at
        # that name) or a --data that is not a directory one can write in:
        # one line saying which file and why (it was a raw sqlite3 or OSError
        # traceback from the coordinator's start).
        self._lock = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _hold(self.path.with_name("catalog.lock"), self.path)
            # (timeout: how long a write waits for a lock another program holds, the
            # coordinator stalled meanwhile; past it, the write is tried again later)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=1.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "shared_state" not in columns:  # a catalog written before --shared-state-dir
                self._db.execute("ALTER TABLE jobs ADD COLUMN shared_state INTEGER NOT NULL DEFAULT 0")
            if "request" not in columns:  # (written before submits carried one)
                self._db.execute("ALTER TABLE jobs ADD COLUMN request TEXT")
            if "timeout" not in {row[1] for row in self._db.execute("PRAGMA table_info(executors)")}:
                self._db.execute("ALTER TABLE executors ADD COLUMN timeout REAL")  # (written before it)
        except (sqlite3.Error, OSError, CatalogError) as exc:
            if self._db is not None:
                self._db.close()
            if self._lock is not None:
                self._lock.close()
            if isinstance(exc, CatalogError):
                raise
            raise CatalogError(f"the catalog {self.path} cannot be used: {exc}") from exc

    def close(self) -> None:
        self._db.close()
        self._lock.close()

    # -- pipelines ------------------------------------------------------------------

    def add_pipeline(self, digest: str, filename: str, content: bytes) -> None:
        self._db.execute("INSERT OR IGNORE INTO pipelines VALUES (?, ?, ?)", (digest, filename, content))

    def pipeline(self, digest: str) -> tuple[str, bytes]:
        filename, content = self._db.execute(
            "SELECT filename, content FROM pipelines WHERE hash = ?", (digest,)).fetchone()
        return filename, bytes(content)

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
        row = asdict(job)
        for key in _JSON_FIELDS:
            row[key] = json.dumps(row[key])
        sets = ", ".join(f"{k} = ?" for k in row if k != "id")
        self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?",
                         (*(v for k, v in row.items() if k != "id"), job.id))

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

    def new_executor_id(self) -> str:
        n = self._db.execute("SELECT COUNT(*) FROM executors").fetchone()[0] + 1
        while self._db.execute("SELECT 1 FROM executors WHERE id = ?", (f"e{n}",)).fetchone():
            n += 1
        return f"e{n}"

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
