"""The job master: places jobs on executors, starts them, follows their
processes, restarts a job whose process or executor was lost, and ends it.

A job's life: `submitted` -> `starting` (placed: each executor asked for a
port, then to start its process with the whole peer list) -> `running` ->
`completed` (every process exited 0). A process that exits because a user
function raised (any failure that is not a lost peer) makes it `failed`,
with that process's `error:` line as its message; `kill` makes it
`killed`. A process killed by a signal, a process that lost its peer, or
an executor that went away makes it `restarting`: the other processes are
stopped and the job is placed again, on the executors that are left (a
job without a state_dir on fewer processes when fewer executors have room,
and any job of one process on fewer cores, or of several on one host:
its state moves by key group),
at most `max_restarts` times: failures only, as a move off an executor
stopped on purpose (it said "leaving") spends none. Every transition of a
job runs under the job's lock, so events about it (exits, a lost
executor, kill) never interleave; events of an attempt that is no longer
current are ignored.

Two attempts of a job never run at once. An executor is counted lost only
once its lease is over: `executor_timeout` seconds since it was last heard
from, by when its job processes are dead (it fences them at FENCE_SHARE of
that without an answer, `_executor.py`, and each ends itself a little
later if the executor, frozen, did not: `kernel.cli._lease`). A closed connection is not a loss: the
executor and its processes may be alive (a reset by the network), and one
that registers again within its lease keeps its jobs (adopted). And a job
is placed again only once every process of its last attempt is known to
have ended: reported exited, stopped on request, or its executor lost.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import re
import sqlite3
import time
from dataclasses import dataclass, replace

from kernel.system._catalog import (
    ACTIVE,
    TERMINAL,
    Catalog,
    CatalogBusy,
    CatalogError,
    Executor,
    Job,
    job_row,
)
from kernel.system._wire import LARGEST_INTEGER, ConnectionLost, RequestError, Session, file_fields

log = logging.getLogger("kernel.system")

# seconds a process's loss (a peer's `lost process 1`, a kernel killed) waits
# for the other exits of its attempt before the job restarts: one of them may
# be the failure that caused it, which fails the job, no restart spent
# (`_restart_unless_failed`). Where every process has exited, it waits no more.
LOSS_HOLD = 5.0
STOP_TIMEOUT = 10.0  # seconds an executor may take to stop a process (it SIGKILLs after 3)
# Restarts back off when attempts keep failing soon after they start: an
# attempt that ran STABLE seconds or more is restarted at once (a lost
# executor's job runs again within moments), as is the first of a series of
# quick failures; each further quick one waits twice as long as the last,
# from BACKOFF_FIRST to BACKOFF_MAX seconds. (With no delay, a job that could
# never start, an executor refusing its start, say, restarted ~170 times a
# second for as many --max-restarts as it was given.)
STABLE = 10.0
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 10.0
# The `error:` lines of a process that ended because a peer went away
# (kernel.net.PeerLost, or a peer that never came): the job is restarted.
_LOST_PEER = ("lost process ", "could not reach ", "peers never came", "no peer ")
# The `error:` line of a job process one of whose kernels (or its links
# process) was killed by a signal: the OOM killer picks the biggest process,
# a kernel, not the launcher, which then exits 1 saying so. That is a loss
# (restart it), as a killed launcher is; it was taken for a user error and
# the job failed without a restart.
# In a job of several processes, its peers report it, and whichever exit the
# coordinator hears of first decides: "process 0 (H:P) failed: kernel 0 was
# killed by SIGKILL" (a peer's) is the same loss.
_KILLED = re.compile(r"(process \d+ \(\S*\) failed: )?(kernel \d+|the links process) was killed by ")
# A process whose links' port, free when its executor picked it (`prepare`),
# or whose dashboard's port (picked by an executor of before: one of now gives
# port 0), was taken before it listened (by an outgoing connection's port,
# another job): the next attempt gets other ports. It was failed for good.
_PORT_TAKEN = re.compile(r"(process \d+ cannot listen on |dashboard \S+: cannot listen there: )"
                         r".*address already in use", re.IGNORECASE)
# A process whose higher-numbered peers never linked it within its start-up timeout
# (`kernel.net._relay`: "process 1 (H:P) did not connect within 30 s"), a peer that
# died as it started, or that never did: a loss, as the dialler's `could not reach
# process 0` is. It was taken for the job's own failure, failed for good.
_NEVER_LINKED = re.compile(r"process \d+ \(\S*\)(, process \d+ \(\S*\))* did not connect within ")


# A peer's failure as a process tells it (kernel.net.PeerFailed): the peer's
# own error follows, which may be a loss of a third process, `process 1
# (H:P) failed: lost process 2 (...)`. Taken for the job's own failure, that
# exit, held with process 2's `exit -9` (`_restart_unless_failed`), failed
# the job for good.
_PEER_FAILED = re.compile(r"process \d+ \(\S*\) failed: ")


def _own_words(error: str) -> str:
    """`error` without the peers' `process N (H:P) failed: ` that passed it on."""
    while (said := _PEER_FAILED.match(error)) is not None:
        error = error[said.end():]
    return error


def classify(code: int, error: str | None) -> str:
    """`ok`, `lost` (restart it) or `failed` (a user function raised, the
    file is broken: restarting would fail again) for a process's exit."""
    if code == 0:
        return "ok"
    if code < 0 or code in (128 + 9, 128 + 15):  # killed by a signal (OOM, an operator's kill)
        return "lost"
    if error and (_own_words(error).startswith(_LOST_PEER) or _KILLED.match(error)
                  or _PORT_TAKEN.match(error) or _NEVER_LINKED.match(_own_words(error))):
        return "lost"
    return "failed"


# An executor's refusal of a `prepare` or `start` as it is being stopped (`ExecutorDaemon._start`)
_STOPPING = re.compile(r"executor (\S+) is stopping")
_CATALOG_ERRORS = (sqlite3.Error, OSError, CatalogError)
WATCH_EVERY = 0.25  # seconds between the job master's rounds (`watch`)
STALLED = 0.4  # a round late by this share of the executor timeout: the coordinator stalled (`_stalled`)
_PING_TIMEOUT = 1.0  # seconds an executor holding an id asked for has to answer (`own_id`)


@dataclass
class Connected:
    """An executor with a live connection."""

    record: Executor
    session: Session
    # when it was last heard from, by the monotonic clock: liveness is judged
    # by it, not by the wall clock of `record.last_seen` (shown), which a
    # clock step moves: stepped on an hour, every executor was "silent for
    # 3600 s" and every job restarted; stepped back, a silent executor was
    # not seen for an hour
    heard: float = 0.0
    instance: str | None = None  # the executor process's own token (`register`)


class JobMaster:
    def __init__(self, catalog: Catalog, *, adopt_grace: float = 5.0, executor_timeout: float = 5.0) -> None:
        self.catalog = catalog
        self.jobs: dict[str, Job] = {job.id: job for job in catalog.at_once(catalog.jobs)}
        self.executors: dict[str, Executor] = {e.id: e for e in catalog.at_once(catalog.executors)}
        self.adopt_grace = adopt_grace
        self.executor_timeout = executor_timeout
        self._started = time.monotonic()
        # Executors not connected whose lease may not be over (their processes
        # may run): id -> (when they count as lost, by the monotonic clock, and
        # why). Those of the last coordinator: after the adoption grace, and
        # never before their lease is surely over.
        self._away: dict[str, tuple[float, str]] = {}
        # Executors being stopped on purpose (they said "leaving": SIGTERM,
        # Ctrl-C) since they last registered: the jobs that lose a process
        # with them move, and spend no restart (`_restart_locked`); each was
        # counted as a failure, and a job moved off executors stopped one
        # after another (a rolling upgrade) failed without ever failing. Kept
        # in the catalog as their state: a restarted coordinator knows them.
        self._leaving: set[str] = set()
        # Executors cut off by this coordinator's own absence: those of the last
        # coordinator, until they register with this one, and those of a stall
        # of this one (frozen: SIGSTOP, a paused VM) for a while after it
        # (`_stalled`), each until when (monotonic). What they report lost
        # while they were cut off (their processes fenced, as it stayed away
        # longer than their lease; a peer's `lost process 1` just before) is
        # no failure of the job's, and spends no restart. It did: a coordinator
        # stopped for an upgrade, or frozen, for longer than the executor
        # timeout failed every job at --max-restarts 0.
        self._cut_off_by_us: dict[str, float] = {}
        for executor in self.executors.values():
            if executor.state == "leaving":  # (stopped on purpose as the last coordinator stopped)
                self._leaving.add(executor.id)
            if executor.state in ("up", "reconnecting", "leaving"):  # until it connects to this one again
                self._cut_off_by_us[executor.id] = math.inf
                # (one stopped on purpose shows so still: `reconnecting`, as one behind a
                # cut cable, it was no longer told from one, though its jobs move as its)
                executor.state = "leaving" if executor.id in self._leaving else "reconnecting"
                # (by the timeout it was told, when longer: restarted with a shorter
                # one, its jobs were restarted while their processes still ran)
                lease = max(adopt_grace, executor_timeout, executor.timeout or 0.0)
                self._away[executor.id] = (self._started + lease,
                                           "it did not come back to the restarted coordinator")
        # job -> the executors that may still run a process of one of its
        # earlier attempts (their stop not confirmed), each with the cores
        # that process holds: the job is not placed again until each has
        # confirmed it or is lost, and those cores are busy until then
        # (`free_cores`), whatever became of the job meanwhile (killed: its
        # old process runs on all the same). Each is its job's `unstopped`, the
        # same dict, saved with it: a coordinator restarted after a kill while
        # the executor was away forgot it, and the job submitted again on its
        # state_dir was started beside the process still running there.
        self._unstopped: dict[str, dict[str, int]] = {}
        # jobs ended whose processes `_end` is stopping: they may still write
        # to their logs (a killed one's `interrupted`); job -> its stops under way
        # (`_stopping`: a leaving executor's, `_stop_ended`, may outlast the others)
        self.ending: dict[str, int] = {}
        changed = []  # (written once the writes can be: below)
        for job in self.jobs.values():
            # (one lost since has fenced its processes; one of now, never heard of, runs none)
            kept = {e: cores for e, cores in job.unstopped.items() if e in self._away}
            if job.status == "restarting":
                # what the last coordinator waited for died with it where it was not
                # written (a catalog of before): any executor the job ran on may still
                # run an earlier attempt
                kept.update({e: max(kept.get(e, 0), job.cores) for e in job.ran_on if e in self._away})
            if kept != job.unstopped:
                changed.append(job)
            job.unstopped = kept  # (the very dict: what changes in one is in the other)
            if kept:
                self._unstopped[job.id] = kept
        self._confirming: set[tuple[str, str]] = set()  # (job, executor) being asked
        self.connected: dict[str, Connected] = {}
        # the exits of each active job's current attempt: process -> (code, error)
        self.exits: dict[str, dict[int, tuple[int, str | None]]] = {
            job.id: {} for job in self.jobs.values() if job.active}
        self._locks: dict[str, asyncio.Lock] = {}
        # restart backoff: when each job's current attempt started (monotonic),
        # the delay of its last restart, and when it may be placed again
        self._attempt_started: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._not_before: dict[str, float] = {}
        # job -> (attempt, its processes reported running by reconnecting executors)
        self._adopted: dict[str, tuple[int, set[int]]] = {}
        # job -> (attempt, why, when it was heard: monotonic): a loss of that attempt held for
        # its other exits (`_restart_unless_failed`); a move free meanwhile spends a restart
        # for it still; the restart's backoff goes from when it was heard (`_restart_locked`)
        self._losses: dict[str, tuple[int, str, float]] = {}
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        # whose last catalog write failed (`_save`): written again each round
        self._unsaved_jobs: set[str] = set()
        self._unsaved_executors: set[str] = set()
        self._resaving = False  # (`_save_again`: one at a time)
        self._writes: set[asyncio.Future] = set()  # the writes in flight (`report_unsaved` awaits them)
        self._write_error: str | None = None  # why the last write failed
        # submits under a request id whose catalog write is in flight: request ->
        # (pipeline, FILE:FLOW, the write): the same request sent again waits for it
        self._submitting: dict[str, tuple[str, str, asyncio.Future]] = {}
        self._closing = False  # close(): the coordinator stops
        # digest -> the text of every active job's pipeline: a job is
        # (re)started without a catalog call, which waits behind the job
        # master's own writes (up to --catalog-timeout each, the catalog
        # locked by another program: a lost job restarted only after that).
        # By its hash alone: each job runs it under its own name (`Job.filename`).
        self._pipelines: dict[str, bytes] = {digest: content for digest, (_, content) in catalog.at_once(
            catalog.pipelines, sorted({job.pipeline for job in self.jobs.values() if job.active})).items()}
        for job in self.jobs.values():
            if job.status in TERMINAL and job.ended is None:
                # A job that ended with no end time written: killed, and the
                # coordinator killed (SIGKILL) between the kill's write and
                # the next (a catalog written before the kill's write carried
                # it). It ended before now: that, rather than nothing shown.
                job.ended = time.time()
                log.warning("%s is %s in the catalog with no end time (its coordinator was stopped before "
                            "writing it): taken as ended now", job.id, job.status)
                self._save(job)
            elif job in changed:
                self._save(job)

    # -- bookkeeping ------------------------------------------------------------------

    @property
    def closing(self) -> bool:
        """The coordinator stops (`close`)."""
        return self._closing

    def _lock(self, job_id: str) -> asyncio.Lock:
        return self._locks.setdefault(job_id, asyncio.Lock())

    def _save(self, job: Job) -> asyncio.Future | None:
        """Write the job to the catalog, on its thread: what happens to the
        job goes on meanwhile. A write that fails (a full disk, the database
        locked past the catalog's timeout) does not stop it either: the job
        goes on as it is in memory, and the write is tried again every `watch`
        round (a failed save used to end the task midway: a job set
        `starting` but never started, a kill that never stopped its
        processes, stayed so for good)."""
        future = self._write(self._unsaved_jobs, job.id, f"{job.id} ({job.status})",
                             self.catalog.save_row, job_row(job))  # (the row as it is now)
        self._notify()
        return future

    def _save_executor(self, executor: Executor) -> None:
        self._write(self._unsaved_executors, executor.id, f"executor {executor.id} ({executor.state})",
                    self.catalog.save_executor, replace(executor))

    def _write(self, unsaved: set[str], key: str, what: str, fn, *args) -> asyncio.Future | None:
        try:
            future = self.catalog.call(fn, *args, write=True, own=True)
        except CatalogError as exc:  # (closed: the coordinator stops)
            self._unwritten(what, exc, key not in unsaved)
            unsaved.add(key)
            return None
        future.add_done_callback(functools.partial(self._written, unsaved, key, what))
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)
        return future

    def _written(self, unsaved: set[str], key: str, what: str, future: asyncio.Future) -> None:
        # (the calls end in the order they were made, and so do these: a
        # later write's outcome is the one that stays)
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            unsaved.discard(key)
        elif isinstance(exc, _CATALOG_ERRORS):
            self._unwritten(what, exc, key not in unsaved)
            unsaved.add(key)
        else:
            log.error("the catalog %s: writing %s: %s", self.catalog.path, what, exc, exc_info=exc)

    def _unwritten(self, what: str, exc: Exception, first: bool) -> None:
        self._write_error = str(exc)
        if first and not self._closing:  # (stopping: `report_unsaved` says it, with the rest)
            log.error("the catalog %s could not be written (%s): %s goes on as it is, and is written "
                      "again every %g s until it can be", self.catalog.path, exc, what, WATCH_EVERY)

    def _save_again(self) -> None:
        """The jobs and executors whose last write failed, written again
        (one such write at a time: the catalog locked, they would pile up)."""
        if self._resaving or not (self._unsaved_jobs or self._unsaved_executors) or self._closing:
            return
        jobs = {j: job_row(self.jobs[j]) for j in self._unsaved_jobs if j in self.jobs}
        executors = {e: replace(self.executors[e]) for e in self._unsaved_executors if e in self.executors}
        job_ids, executor_ids = set(self._unsaved_jobs), set(self._unsaved_executors)

        def write() -> None:
            for row in jobs.values():
                self.catalog.save_row(row)
            for executor in executors.values():
                self.catalog.save_executor(executor)

        def written(future: asyncio.Future) -> None:
            self._resaving = False
            if future.cancelled() or future.exception() is not None:
                return  # (said once for each: `_unwritten`)
            self._unsaved_jobs.difference_update(job_ids)
            self._unsaved_executors.difference_update(executor_ids)
            if not (self._unsaved_jobs or self._unsaved_executors):
                log.warning("the catalog %s is written again: it holds every job and executor as they are",
                            self.catalog.path)

        try:
            future = self.catalog.call(write, write=True, own=True)
        except CatalogError:
            return
        self._resaving = True
        future.add_done_callback(written)
        self._writes.add(future)
        future.add_done_callback(self._writes.discard)

    async def _writable(self, job: Job, **changes) -> None:
        """A request's change of `job` (a kill) written to the catalog first,
        or refused: the client is told, and the job stays as it was, to be
        asked again (a kill answered "killed" but kept only in memory would
        come back running after a coordinator restart)."""
        try:
            await self.catalog.call(self.catalog.save_row, job_row(replace(job, **changes)), write=True)
        except _CATALOG_ERRORS as exc:
            raise RequestError(f"the catalog {self.catalog.path} cannot be written ({exc}): "
                               f"{job.id} was left as it is", busy=isinstance(exc, CatalogBusy)) from None

    def _notify(self) -> None:
        """Wake whoever waits for a change (`wait_for_change`), once: the
        event is replaced, never left set (one left set by a register made
        every waiting client's `wait` loop spin the coordinator's CPU)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _spawn(self, coroutine) -> asyncio.Task | None:
        """The coroutine run in a task of the master's own (None: not run, closing)."""
        if self._closing:
            # the coordinator stops (its server then closes every connection:
            # no executor is lost, each reconnects to the next coordinator,
            # which adopts its jobs): what would start now is for that one
            coroutine.close()
            return None
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("job master: %s", task.exception(), exc_info=task.exception())

    def free_cores(self, executor_id: str) -> int:
        if self.executors[executor_id].state == "leaving":
            return 0  # (stopping: nothing more is placed there)
        used = sum(job.cores for job in self.jobs.values() if job.active
                   and any(p["executor"] == executor_id for p in job.placement))
        # An attempt not yet confirmed stopped holds its cores: counted free,
        # another job was placed beside it and the machine oversubscribed
        # (for as long as the stop took, up to the executor's lease).
        unconfirmed = sum(held.get(executor_id, 0) for held in self._unstopped.values())
        return self.executors[executor_id].cores - used - unconfirmed

    async def wait_for_change(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass

    # -- submitting ---------------------------------------------------------------

    async def submit(self, *, filename: str, content: bytes, digest: str, flow: str, processes: int | None,
               cores: int, executors: list[str] | None, state_dir: str | None,
               epoch_interval: float | None, max_restarts: int, shared_state: bool = False,
               request: str | None = None) -> Job:
        if request is not None:
            for job in self.jobs.values():
                if job.request == request:  # sent again: its reply was lost
                    if (job.pipeline, job.filename, job.flow) != (digest, filename, flow):
                        raise RequestError(f"submit: request id {request!r} was {job.id}'s, "
                                           "for another pipeline")
                    return job
            pending = self._submitting.get(request)
            if pending is not None:  # sent again while its write is in flight: that write's job
                if pending[:2] != (digest, f"{filename}:{flow}"):
                    raise RequestError(f"submit: request id {request!r} is being submitted, for another "
                                       "pipeline")
                try:
                    return await asyncio.shield(pending[2])
                except _CATALOG_ERRORS as exc:
                    raise RequestError(f"the catalog {self.catalog.path} cannot be written ({exc}): the job "
                                       "was not submitted", busy=isinstance(exc, CatalogBusy)) from None
        if executors:
            unknown = [e for e in executors if e not in self.executors]
            if unknown:
                raise RequestError(f"no such executor: {', '.join(unknown)} "
                                   f"(known: {', '.join(self.executors) or 'none'})")
            if len(set(executors)) != len(executors):
                raise RequestError("--executors names an executor twice (one process per executor)")
            processes = processes or len(executors)
            if processes != len(executors):
                raise RequestError(f"--processes {processes} but {len(executors)} executors named")
            small = [e for e in executors if self.executors[e].cores < cores]
            if small:
                raise RequestError(f"executor {small[0]} has {self.executors[small[0]].cores} cores, "
                                   f"fewer than --cores {cores}")
        processes = processes or 1
        fit = sum(1 for e in self.executors.values() if e.state != "lost" and e.cores >= cores)
        if fit < processes:
            # (", the system has 0" alone read as no executors at all)
            known = ", ".join(f"{e.id} with {e.cores} core(s)" for e in self.executors.values()
                              if e.state != "lost") or "none"
            raise RequestError(f"the job needs {processes} executor(s) with {cores} core(s) each; "
                               f"the system has {fit} (its executors: {known})")

        def create() -> Job:  # (the catalog's thread, one transaction: the job's seq is its own)
            self.catalog.add_pipeline(digest, filename, content)  # (kept once: a text sent again is not)
            return self.catalog.new_job(
                name=f"{filename}:{flow}", flow=flow, pipeline=digest, processes=processes, cores=cores,
                executors=executors or None, state_dir=state_dir, epoch_interval=epoch_interval,
                max_restarts=max_restarts, shared_state=shared_state, request=request)

        try:
            written = self.catalog.call(create, write=True)
            if request is not None:
                self._submitting[request] = (digest, f"{filename}:{flow}", written)
            try:
                job = await written
            finally:
                if request is not None:
                    self._submitting.pop(request, None)
        except _CATALOG_ERRORS as exc:
            # (busy: nothing was written, the client asks again under the same request id)
            raise RequestError(f"the catalog {self.catalog.path} cannot be written ({exc}): the job was "
                               "not submitted", busy=isinstance(exc, CatalogBusy)) from None
        self.jobs[job.id] = job
        self.exits[job.id] = {}
        self._pipelines.setdefault(digest, content)
        log.info("%s submitted: %s, %d process(es) of %d core(s)", job.id, job.name, processes, cores)
        self._notify()
        self.reconcile()
        return job

    # -- placing and starting -----------------------------------------------------------

    def reconcile(self) -> None:
        """Start every job waiting for a place that now has one."""
        now = time.monotonic()
        for job in self.jobs.values():
            if job.status in ("submitted", "restarting") and not self._lock(job.id).locked() \
                    and self._not_before.get(job.id, 0.0) <= now and not self._unstopped.get(job.id) \
                    and self._state_dir_free(job):
                if self._place(job) is not None:
                    self._spawn(self._launch(job.id))

    def _state_dir_free(self, job: Job) -> bool:
        """Whether no process of another job may still run on the job's
        state_dir: one killed (or restarted) while its executor was away
        runs on there, holding it (`kernel run`'s lock), until that executor
        comes back and stops it or is lost (`_unstopped`). Started beside
        it, the job failed for good, `state_dir ... is in use by another
        run`. A job submitted meanwhile waits, and says so (its message)."""
        if job.state_dir is None:
            return True
        mine = os.path.normpath(job.state_dir)
        for other_id, away in self._unstopped.items():  # (few: not every job of the catalog)
            other = self.jobs.get(other_id)
            if other is None or other is job or not away or os.path.normpath(other.state_dir or "") != mine:
                continue
            if job.status == "submitted":
                said = (f"waiting for {other.id}'s process on executor(s) {', '.join(sorted(away))} to "
                        f"stop: it may still run on state_dir {job.state_dir!r} (until each executor stops "
                        f"it, or is lost, {self.executor_timeout:g} s after it was last heard from)")
                if job.message != said:
                    job.message = said
                    self._save(job)
            return False
        if job.status == "submitted" and job.message is not None:
            # (what it waited for has stopped: said on until its start, the job still waiting
            # for room, it waited for good for a process that had stopped. Nothing else
            # says a message on a job not yet started.)
            job.message = None
            self._save(job)
        return True

    def _place(self, job: Job) -> tuple[list[str], int] | None:
        """(executors, cores per process) for the job now, or None: it waits.
        A restarting job without a state_dir starts over, so it may be
        rescaled to what is left: fewer processes, fewer cores each. One
        with a state_dir resumes from its snapshots: a one-process job may
        have fewer cores (a resumed run moves keyed state by key group), and
        so may a cluster whose state_dir is one directory, which a cluster
        needs to change its shape: submitted with --shared-state-dir, or on
        executors, those it ran on and those it would run on, all on one
        host (the same path on each); elsewhere a cluster keeps its shape."""
        up = [e for e in self.connected if self.free_cores(e) >= job.cores]
        if job.executors:
            return (list(job.executors), job.cores) if all(e in up for e in job.executors) else None
        up.sort(key=lambda e: (-self.free_cores(e), self.executors[e].registered))
        if len(up) >= job.processes:
            return up[: job.processes], job.cores
        if job.status != "restarting":
            return None
        some = sorted((e for e in self.connected if self.free_cores(e) >= 1),
                      key=lambda e: (-self.free_cores(e), self.executors[e].registered))[: job.processes]
        if not some:
            return None
        if job.state_dir is not None and job.processes > 1 and not job.shared_state and len(
                {self.executors[e].host for e in [*job.ran_on, *some] if e in self.executors}) > 1:
            return None
        return some, min(job.cores, *(self.free_cores(e) for e in some))

    async def _launch(self, job_id: str) -> None:
        job = self.jobs[job_id]
        async with self._lock(job_id):
            # (`reconcile` checked the backoff when it spawned this; a launch
            # spawned beside it, by a reconcile just after, may find the job
            # restarting again, its backoff set anew by the first one's
            # failure: it waits for `_after` as well. It launched at once: a
            # job that could never start skipped its pauses, under load.)
            if job.status not in ("submitted", "restarting"):
                return
            if job.pipeline not in self._pipelines:  # (missing from the catalog when it was read at start)
                try:  # (read first, waiting for no other job: all else is judged after it)
                    read = await self.catalog.call(self.catalog.pipeline, job.pipeline)
                    self._pipelines[job.pipeline] = read[1]
                except _CATALOG_ERRORS as exc:  # (it waits: the next round's `reconcile` tries again)
                    log.error("%s: its pipeline could not be read from the catalog %s: %s", job.id,
                              self.catalog.path, exc)
                    return
            content = self._pipelines[job.pipeline]
            filename = job.filename  # (its own name: the text may have come first under another)
            if job.status not in ("submitted", "restarting") or self._unstopped.get(job.id) \
                    or self._not_before.get(job.id, 0.0) > time.monotonic() or not self._state_dir_free(job):
                return
            placed = self._place(job)
            if placed is None:
                return
            chosen, cores = placed
            if (len(chosen), cores) != (job.processes, job.cores):
                log.warning("%s: rescaled from %d process(es) of %d core(s) to %d of %d: that is what "
                            "the executors left have room for", job.id, job.processes, job.cores,
                            len(chosen), cores)
                job.processes, job.cores = len(chosen), cores
            if job.status == "submitted":
                job.message = None  # (what it waited for: `_state_dir_free`)
            job.attempt += 1
            job.status = "starting"
            self._attempt_started[job.id] = time.monotonic()
            job.placement = [{"executor": e, "host": self.executors[e].host, "port": None} for e in chosen]
            job.ran_on = sorted(set(job.ran_on) | set(chosen))
            self.exits[job.id] = {}
            self._save(job)
            attempt = job.attempt
            try:
                sessions = [self.connected[e].session for e in chosen]
            except KeyError as exc:
                return await self._restart_locked(job, attempt, f"executor {exc.args[0]} went away")
            try:
                if job.processes > 1:
                    ports = await asyncio.gather(*(s.request("prepare") for s in sessions))
                    for place, reply in zip(job.placement, ports):
                        place["port"] = reply["port"]
                    peers = ",".join(f"{_host(p['host'])}:{p['port']}" for p in job.placement)
                else:
                    peers = None
                started = await asyncio.gather(*(s.request(
                    "start", job=job.id, attempt=attempt, process=i, peers=peers, flow=job.flow,
                    filename=filename, **file_fields(content), digest=job.pipeline, cores=job.cores,
                    state_dir=job.state_dir, epoch_interval=job.epoch_interval)
                    for i, s in enumerate(sessions)))
                for place, reply in zip(job.placement, started):
                    # the process's own page, if any: an executor of before names it here, one
                    # of now once it listens (`dashboard_listening`, which may have come first)
                    if reply.get("dashboard") is not None or "dashboard" not in place:
                        place["dashboard"] = reply.get("dashboard")
            except (ConnectionLost, RequestError, TimeoutError) as exc:
                stopping = self._stopping_among(chosen, exc)
                if stopping is not None:
                    # (the stop's doing, as the loss of a process it ends: moved free. A
                    # start sent before its "leaving" was heard, refused as it left, spent
                    # a restart: a job at --max-restarts 0 failed, never having run)
                    return await self._restart_locked(job, attempt, _stopped(stopping), counted=False)
                return await self._restart_locked(job, attempt, f"could not start: {exc}")
            if job.status == "starting" and job.attempt == attempt:
                job.status = "running"
                job.started = job.started or time.time()
                self._save(job)
                log.info("%s running on %s (attempt %d)", job.id, ", ".join(chosen), attempt)

    def _stopping_among(self, chosen: list[str], exc: Exception) -> str | None:
        """The executor of `chosen` being stopped on purpose that made a
        start fail (`exc`), if any: one that said "leaving", or whose refusal
        says it is stopping (`ExecutorDaemon._start`: its "leaving" not heard,
        or never said, an app's close()), taken as leaving from now on."""
        said = _STOPPING.fullmatch(str(exc)) if isinstance(exc, RequestError) else None
        if said is not None and said.group(1) in chosen:
            if said.group(1) not in self._leaving:
                self.executor_leaving(said.group(1))
            return said.group(1)
        return next((e for e in chosen if e in self._leaving), None)

    # -- what happens to a job ----------------------------------------------------------------

    async def process_exited(self, job_id: str, attempt: int, process: int, code: int,
                             error: str | None, coordinator_away: bool = False,
                             on_its_own: bool = False) -> None:
        """`coordinator_away`: it ended while its executor was cut off from the
        coordinator, which has restarted since: a loss then (fenced) is the
        coordinator's absence, not the job's failure. `on_its_own`: its
        executor, being stopped, says it did not stop this process
        (`ExecutorDaemon._report_own_exits`)."""
        job = self.jobs.get(job_id)
        if job is None:
            return
        async with self._lock(job_id):
            if job.status not in ("starting", "running") or job.attempt != attempt:
                return
            self.exits[job_id][process] = (code, error)
            self._notify()  # (a loss held for the attempt's other exits hears of this one)
            kind = classify(code, error)
            where = f"process {process} on executor {job.placement[process]['executor']}"
            # A process that ended beside one on an executor being stopped (its
            # peer, `lost process 0`, or `process 0 ... failed: interrupted
            # (Ctrl-C)` as the stop's SIGINT reached that one), heard of before
            # the executor says it has left: the stop's doing, not a failure.
            # (Taken for the job's own, that exit failed a job of several
            # processes whose executor was stopped on purpose.)
            # (Not its own executor where that says the process ended on its own: its failure
            # as the stop began was moved free, its error lost. A peer's stop may still be why.)
            mine = job.placement[process]["executor"] if on_its_own else None
            stopped = next((p["executor"] for p in job.placement if p["executor"] in self._leaving
                            and p["executor"] != mine), None)
            if kind == "ok":
                if len(self.exits[job_id]) == job.processes and all(
                        c == 0 for c, _ in self.exits[job_id].values()):
                    await self._end(job, "completed", None)
            elif stopped is not None:
                # A peer's exit while that executor still leaves waits for its "left" (or its
                # loss), which moves the job (`_done_on`): its own process may have failed on
                # its own as the stop began, told just before "left". Moved at the peer's
                # `lost process 0`, heard first, the job ran again, that failure dropped.
                if stopped not in self.connected or job.placement[process]["executor"] == stopped:
                    await self._restart_locked(job, attempt, _stopped(stopped), counted=False)
                else:  # (for STOP_TIMEOUT at most: a stop that never ends, beating on, held it for ever)
                    # (said meanwhile: `running` and no message, its peer dead, it showed nothing
                    # of what it waited for)
                    job.message = (f"waiting for executor {stopped}, being stopped, to leave: {where} "
                                   f"ended ({error or f'exit {code}'})")
                    self._save(job)
                    self._spawn(self._held(job, attempt, stopped))
            elif kind == "failed":
                await self._end(job, "failed", error or f"{where} exited with code {code}")
            elif coordinator_away:
                self._losses.pop(job_id, None)  # (a loss held before this was the fence's doing too)
                why = (f"{where} ended while the coordinator was away ({error or f'exit {code}'}): not a "
                       "failure, no restart spent")
                await self._restart_locked(job, attempt, why, counted=False)
            else:  # (lost)
                why = error or f"{where} was killed (exit {code})"
                if len(self.exits[job_id]) < job.processes:
                    # a peer's `lost process 1` may be heard before process 1's own exit,
                    # a user function's error (its word to the peers not out in time: a
                    # loaded machine): the loss waits for the other exits, one of which
                    # fails the job at once where it is the job's own
                    if self._losses.get(job_id, (None,))[0] != attempt:
                        self._losses[job_id] = (attempt, why, time.monotonic())
                        # (said meanwhile, as the hold for an executor's stop is: `running`
                        # and no message, a process dead, it showed nothing of what it waited for)
                        job.message = (f"waiting for the other processes' exits ({LOSS_HOLD:g} s at most) "
                                       f"before restarting: {where} ended ({error or f'exit {code}'})")
                        self._save(job)
                    self._spawn(self._restart_unless_failed(job, attempt, why))
                else:
                    await self._restart_locked(job, attempt, self._cause(job, why))
        self.reconcile()

    def _cause(self, job: Job, why: str) -> str:
        """The restart's message for a loss of the attempt (`why`, heard
        first or last): the first loss heard that is not a peer's word of it
        (`lost process 1`), the cause, where there is one. (Taken at the last
        exit, the cause's own `was killed (exit -9)`, heard first, gave way to
        its peer's `lost process 1`.)"""
        for process, (code, error) in self.exits.get(job.id, {}).items():
            if classify(code, error) == "lost" and not _own_words(error or "").startswith(_LOST_PEER):
                return error or (f"process {process} on executor {job.placement[process]['executor']} "
                                 f"was killed (exit {code})")
        return why

    async def _restart_unless_failed(self, job: Job, attempt: int, why: str) -> None:
        """The attempt restarted for a loss (`why`) once every process of it
        has exited, or after LOSS_HOLD: unless one of those exits, heard
        meanwhile, was a failure of the job's own, which ends it (failed, no
        restart spent; `process_exited`). A job of two processes failing on
        a user error was restarted (1 restart, not 0) where the peer's loss
        came first."""
        deadline = asyncio.get_running_loop().time() + LOSS_HOLD
        while (job.attempt == attempt and len(self.exits.get(job.id, {})) < job.processes
               and (left := deadline - asyncio.get_running_loop().time()) > 0):
            await self.wait_for_change(left)
        async with self._lock(job.id):
            # (not where the attempt is over: restarted meanwhile, its placement is gone)
            over = job.attempt != attempt or job.status not in ("starting", "running")
            await self._restart_locked(job, attempt, why if over else self._cause(job, why))
        self.reconcile()

    async def _held(self, job: Job, attempt: int, executor_id: str) -> None:
        """A peer's exit held for the "left" of `executor_id`, being stopped
        (`process_exited`): moved, no restart spent, where neither that nor its
        loss has come within STOP_TIMEOUT (a job process that SIGKILL does not
        end, uninterruptible in the kernel: its stop never ends, and it beats on;
        the job showed `running` for good). Its next attempt waits, as any, until
        that executor confirms the process stopped, or is lost (`_wait_for_stops`)."""
        await asyncio.sleep(STOP_TIMEOUT)
        async with self._lock(job.id):
            await self._restart_locked(job, attempt, _stopped(executor_id), counted=False)
        self.reconcile()

    def dashboard_listening(self, executor_id: str, job_id: str, attempt: int, process: int,
                            url: str) -> None:
        """A process of the job says where its dashboard listens (its
        executor read it from the process's output: a port the system picked,
        never one taken between a pick and the bind): `status` and the
        system's page link to it from now on."""
        job = self.jobs.get(job_id)
        if job is None or job.attempt != attempt or job.status not in ("starting", "running") \
                or not isinstance(process, int) or not 0 <= process < len(job.placement) \
                or job.placement[process]["executor"] != executor_id:
            return  # (an attempt over, or not that executor's)
        job.placement[process]["dashboard"] = url
        self._save(job)

    async def executor_lost(self, executor_id: str, why: str) -> None:
        executor = self.executors.get(executor_id)
        if executor is None:
            return
        executor.state = "lost"
        self._save_executor(executor)
        log.warning("executor %s lost: %s", executor_id, why)
        self._away.pop(executor_id, None)
        # (stopped on purpose: "left", or killed while it stopped, a grace period
        # over, its lease ended since; its jobs move, no restart spent. Left
        # in `_leaving` until they have: `_orphans`, on its round meanwhile,
        # moves those not yet reached as this would)
        stopped = executor_id in self._leaving
        for job_id in list(self._unstopped):  # it has fenced its processes
            self._stop_confirmed(job_id, executor_id)
        for job in list(self.jobs.values()):
            if job.status in ("starting", "running") and any(
                    p["executor"] == executor_id for p in job.placement):
                attempt = job.attempt
                async with self._lock(job.id):
                    if not self._done_on(job, attempt, executor_id, stopped):
                        await self._restart_locked(
                            job, attempt, _stopped(executor_id) if stopped else
                            f"lost executor {executor_id} ({why})", counted=not stopped)
        if self.executors[executor_id].state == "lost":  # (not registered again meanwhile)
            self._leaving.discard(executor_id)
        self._notify()
        self.reconcile()

    async def kill(self, job_id: str) -> Job:
        job = self._job(job_id)
        async with self._lock(job_id):
            if not job.active:
                raise RequestError(f"{job_id} is already {job.status}")
            # (its end time in the same write: a coordinator killed before
            # `_end`'s write left the job killed with no end time)
            ended = time.time()
            # (with every executor of it, which runs its process on until it has stopped it:
            # those away until they come back, the others for the stop's time, up to
            # STOP_TIMEOUT. Written only after those stops, or without the executors
            # connected, a coordinator killed meanwhile left the job killed and waited for
            # nowhere, and started the job submitted again on its state_dir beside that
            # process. `_end` lets each go as it confirms the stop: `_stop_held`)
            unstopped = self._with_unstopped(job, self._not_lost(job.placement))
            await self._writable(job, status="killed", message="killed by request", ended=ended,
                                 unstopped=unstopped)
            await self._end(job, "killed", "killed by request", ended)
            if job.unstopped:
                # (on disk before the answer: a coordinator killed just after it
                # would start the job submitted again on its state_dir beside its
                # process; a write that fails is written again, `_save_again`)
                written = self._save(job)
                if written is not None:
                    await asyncio.gather(asyncio.shield(written), return_exceptions=True)
        self.reconcile()
        return job

    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise RequestError(f"no such job: {job_id}")
        return job

    async def _end(self, job: Job, status: str, message: str | None, ended: float | None = None) -> None:
        placement, attempt = list(job.placement), job.attempt
        job.status = status
        job.message = message
        job.ended = time.time() if ended is None else ended
        # Every executor of the attempt may run its process until it says it has stopped
        # it: held from this write on (`kill`'s own), let go as it confirms (`_stop_held`).
        # (Held only where its stop failed, a coordinator killed while a connected one
        # still stopped it forgot that process, and the job submitted again on its
        # state_dir started beside it.) Those held before, for an earlier attempt, stay
        # held until `_confirm_stopped` has them stop every process of the job.
        # (Not one whose every process of it has exited, heard: it runs none, and a stop
        # there ends nothing. Held, a job that completed wrote its row once more for
        # each of its executors, the stops' answers letting them go.)
        held_before = set(job.unstopped)
        exited = self.exits.get(job.id, {})
        self._hold(job, self._not_lost([p for i, p in enumerate(placement) if i not in exited]))
        self._save(job)
        for backoff in (self._attempt_started, self._backoff, self._not_before, self._losses):
            backoff.pop(job.id, None)
        self._adopted.pop(job.id, None)
        if not any(j.active and j.pipeline == job.pipeline for j in self.jobs.values()):
            self._pipelines.pop(job.pipeline, None)  # (no job will start it again)
        # (an attempt still unconfirmed keeps being asked, and its cores stay
        # busy, until its executor confirms it stopped or is lost)
        self._forget_topics(job.id)
        log.info("%s %s%s", job.id, status, f": {message}" if message else "")
        # (its cores stay busy where it may still run: killed while its
        # executor was away, the next job was started beside its process,
        # and a resubmission on its state_dir could run beside it)
        # An executor being stopped stops the job's processes there anyway, in its own
        # time (SIGINT, SIGKILL 3 s later): not waited for here, a `kill` of the job
        # answered only after that stop. (Its cores there are no one's meanwhile:
        # `free_cores`.) Not for a job with a state_dir: its process holds it until it
        # has stopped, and the job submitted again on it as the kill answered failed
        # for good, `state_dir ... is in use by another run`.
        leaving = [p for p in placement if p["executor"] in self._leaving] if job.state_dir is None else []
        if leaving:
            # (counted `ending` from now: `logs` said the job killed while that stop still ran,
            # a `logs --follow` stopping before the last lines its processes wrote there)
            self._stopping(job.id, +1)
            self._spawn(self._stop_ended(job, attempt, leaving, held_before))
        # (in a task of the master's own, awaited: the caller may be cancelled, an executor's
        # report of an exit served in its connection's task, cancelled as that closes. Cancelled
        # within the stops, each executor they held stayed held for good, asked by nobody)
        self._stopping(job.id, +1)
        stopping = self._spawn(self._stop_ended(job, attempt, [p for p in placement if p not in leaving],
                                                held_before))
        if stopping is None:  # (the coordinator stops: its row holds them for the next one)
            self._stopping(job.id, -1)
        else:
            await asyncio.shield(stopping)

    def _stopping(self, job_id: str, step: int) -> None:
        """One more (+1) or one fewer (-1) stop of the ended job under way (`ending`)."""
        left = self.ending.get(job_id, 0) + step
        if left > 0:
            self.ending[job_id] = left
        else:
            self.ending.pop(job_id, None)

    async def _stop_ended(self, job: Job, attempt: int, placement: list[dict], held_before: set[str]) -> None:
        """Stop the processes of the ended job's `attempt` on `placement` (`_end`),
        counted in `ending` by `_end`."""
        try:
            await self._stop_held(job, attempt, placement, held_before)
        finally:
            self._stopping(job.id, -1)

    async def _stop_held(self, job: Job, attempt: int, placement: list[dict], held_before: set[str]) -> None:
        """Stop the ended job's `attempt` on `placement`, whose executors `_end`
        holds (`_unstopped`): each whose stop answers has stopped it, and is let
        go as it answers (not one of `held_before`, held for an earlier attempt,
        which this stop does not reach: `_confirm_stopped` asks it); the others
        stay held until they confirm it or are lost (`_wait_for_stops`). The
        row is written once, as all have answered (one held there a moment
        longer is only asked again by a restarted coordinator)."""
        executors = dict.fromkeys(p["executor"] for p in placement)
        let_go = await asyncio.gather(*(
            self._stop_on(job, attempt, [p for p in placement if p["executor"] == e], held_before)
            for e in executors))
        if any(let_go):
            self._save(job)

    async def _stop_on(self, job: Job, attempt: int, placement: list[dict], held_before: set[str]) -> bool:
        """`_stop_held` on one executor (`placement`: its places): whether it was let go.
        (Let go as all had answered, a stop that hung, up to STOP_TIMEOUT, kept
        the cores of the others busy, the job's process there long stopped.)"""
        executor_id = placement[0]["executor"]
        unstopped = await self._stop(job.id, attempt, placement)
        self._wait_for_stops(job, attempt, unstopped)
        if executor_id in unstopped or executor_id in held_before or not self._let_go(job.id, executor_id):
            return False
        self._notify()  # (its cores free: `status` waiters hear of it now, not at the row's write)
        self.reconcile()  # (a job waiting for its state_dir, or for these cores)
        return True

    def _forget_topics(self, job_id: str) -> None:
        """The topics the ended job published go (after its save: in order).
        (One that cannot be written stays listed: a later publisher takes it over.)"""
        def failed(future: asyncio.Future) -> None:
            if not future.cancelled() and future.exception() is not None:
                log.error("%s: its topics could not be taken out of the catalog: %s", job_id,
                          future.exception())

        try:
            self.catalog.call(self.catalog.forget_topics_of, job_id, write=True, topics=True, own=True) \
                .add_done_callback(failed)
        except CatalogError as exc:
            log.error("%s: its topics could not be taken out of the catalog: %s", job_id, exc)

    async def _restart_locked(self, job: Job, attempt: int, why: str, counted: bool = True) -> None:
        """The attempt is over: the job is placed again. A failure (`counted`)
        spends one of its --max-restarts, past which the job fails; a move off
        an executor stopped on purpose spends none, and waits for no backoff."""
        if job.attempt != attempt or job.status not in ("starting", "running"):
            return  # an event of an attempt already over
        held = self._losses.pop(job.id, None)
        if not counted and held is not None and held[0] == attempt:
            # (a loss heard before an executor of the attempt was stopped on purpose, held
            # for its other exits: a failure still, as when it restarted the job at once;
            # the stop, within the hold, moved the job free)
            why, counted = self._cause(job, held[1]), True
        if counted and job.restarts >= job.max_restarts:
            return await self._end(job, "failed", f"{why}; gave up after {job.restarts} restart(s)")
        placement = list(job.placement)
        if counted:
            job.restarts += 1
        job.status = "restarting"
        job.message = why
        job.placement = []
        self._save(job)
        now = time.monotonic()
        # A loss held for the attempt's other exits failed it when it was heard: what the
        # attempt ran, and the pause after it, go from then. (From the hold's end, an attempt
        # that failed quickly was taken for stable, the hold's wait counted as its run, and
        # its series of quick failures forgotten; and the pause came after the hold's wait.)
        failed = held[2] if held is not None and held[0] == attempt else now
        started = self._attempt_started.get(job.id)
        if not counted:
            delay = 0.0  # (no failure: the backoff of the failures before stays as it was)
        elif started is None or failed - started >= STABLE:
            # (or an attempt adopted by a restarted coordinator: its start unknown)
            delay = 0.0
            self._backoff.pop(job.id, None)
        else:  # a quick failure: the first of a series at once, then backing off
            delay = min(BACKOFF_MAX, max(BACKOFF_FIRST, 2 * self._backoff[job.id])) \
                if job.id in self._backoff else 0.0
            self._backoff[job.id] = delay
        self._not_before[job.id] = failed + delay
        if counted:
            left = failed + delay - now
            log.warning("%s restarting (%d of at most %d)%s: %s", job.id, job.restarts, job.max_restarts,
                        f" in {left:.3g} s" if left > 0 else "", why)
        else:
            log.info("%s placed again, no restart spent (%d of at most %d so far): %s", job.id, job.restarts,
                     job.max_restarts, why)
        # before another attempt may run (and use its state_dir)
        self._wait_for_stops(job, attempt, await self._stop(job.id, attempt, placement))
        self._spawn(self._after(failed + delay - time.monotonic()))

    async def _after(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self.reconcile()

    async def _stop(self, job_id: str, attempt: int, placement: list[dict]) -> set[str]:
        """Stop the attempt's processes; the executors that may still run
        one: not connected but not lost (within their lease), or whose stop
        failed."""
        asked = list(dict.fromkeys(p["executor"] for p in placement if p["executor"] in self.connected))
        unstopped = self._unreachable(placement)
        stops = [self.connected[e].session.request("stop", timeout=STOP_TIMEOUT, job=job_id, attempt=attempt)
                 for e in asked]
        for executor_id, result in zip(asked, await asyncio.gather(*stops, return_exceptions=True)):
            if isinstance(result, Exception):
                log.warning("%s: stopping attempt %d on executor %s: %s", job_id, attempt, executor_id,
                            result or type(result).__name__)
                unstopped.add(executor_id)
        return unstopped

    def _wait_for_stops(self, job: Job, attempt: int, executors: set[str]) -> None:
        """The job's next attempt waits until each of `executors` has
        confirmed that no process of it runs there (asked now if connected,
        else when it registers again) or is lost (its lease over: fenced);
        the attempt's cores there are busy until then."""
        # (one lost while its stop was being asked has fenced: nobody would clear it)
        executors = {e for e in executors if self.executors[e].state != "lost"}
        if not executors:
            return
        self._hold(job, executors)
        self._save(job)
        waits = "the next attempt waits" if job.active else "its cores there stay busy"
        log.warning("%s: attempt %d may still run on executor(s) %s: %s until each has stopped it, or is "
                    "lost (%g s after it was last heard from)", job.id, attempt, ", ".join(sorted(executors)),
                    waits, self.executor_timeout)
        for executor_id in executors:
            if executor_id in self.connected:
                self._ask_to_confirm(job.id, executor_id)

    def _unreachable(self, placement: list[dict]) -> set[str]:
        """The executors of `placement` that no stop reaches now: not
        connected, and not lost (within their lease: their processes run on)."""
        return {p["executor"] for p in placement if p["executor"] not in self.connected
                and self.executors[p["executor"]].state != "lost"}

    def _not_lost(self, placement: list[dict]) -> set[str]:
        """The executors of `placement` that may run its processes on: all but
        those lost (which have fenced them)."""
        return {p["executor"] for p in placement if self.executors[p["executor"]].state != "lost"}

    @staticmethod
    def _with_unstopped(job: Job, executors: set[str]) -> dict[str, int]:
        """The job's `unstopped` with `executors` added, each holding the job's cores."""
        return {**job.unstopped, **{e: max(job.unstopped.get(e, 0), job.cores) for e in executors}}

    def _hold(self, job: Job, executors: set[str]) -> None:
        """`executors` may still run a process of the job (`_unstopped`: in its
        own dict, the job's `unstopped`, saved with it by the caller)."""
        if executors:
            job.unstopped.update(self._with_unstopped(job, executors))
            self._unstopped[job.id] = job.unstopped

    def _ask_to_confirm(self, job_id: str, executor_id: str) -> None:
        # (one asking at a time: a second could still be asking after the
        # first has cleared the way, when a new attempt may run there)
        if (job_id, executor_id) not in self._confirming:
            self._confirming.add((job_id, executor_id))
            self._spawn(self._confirm_stopped(job_id, executor_id))

    async def _confirm_stopped(self, job_id: str, executor_id: str) -> None:
        """Ask `executor_id` to stop every process of the job it runs (all of
        earlier attempts: none is placed while it is asked) until it answers
        that it has; on a connection lost, its next register asks again."""
        try:
            await self._ask_until_stopped(job_id, executor_id)
        finally:
            self._confirming.discard((job_id, executor_id))

    async def _ask_until_stopped(self, job_id: str, executor_id: str) -> None:
        while executor_id in self._unstopped.get(job_id, ()):
            entry = self.connected.get(executor_id)
            if entry is None:
                return  # its next register asks again, or it is lost
            try:
                await entry.session.request("stop", timeout=STOP_TIMEOUT, job=job_id, attempt=None)
            except ConnectionLost:
                if self.connected.get(executor_id) is entry:
                    return  # (closing: its next register asks again)
                continue  # registered again meanwhile: ask that connection
            except (RequestError, TimeoutError) as exc:
                log.warning("%s: executor %s did not confirm the job's processes stopped (%s); asking "
                            "again", job_id, executor_id, exc or type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            if self._stop_confirmed(job_id, executor_id):
                log.info("%s: no earlier attempt runs any more", job_id)
            self.reconcile()
            return

    def _stop_confirmed(self, job_id: str, executor_id: str) -> bool:
        """No process of the job runs on `executor_id` any more (it said so, or
        is lost): taken out of `_unstopped`, and out of the job's row. Whether
        that was the last executor the job waited for."""
        if not self._let_go(job_id, executor_id):
            return False
        self._save(self.jobs[job_id])
        return job_id not in self._unstopped

    def _let_go(self, job_id: str, executor_id: str) -> bool:
        """`executor_id` taken out of `_unstopped` (its row written by the
        caller): whether it was there."""
        waiting = self._unstopped.get(job_id)
        if waiting is None or executor_id not in waiting:
            return False
        del waiting[executor_id]
        if not waiting:
            del self._unstopped[job_id]
        return True

    # -- executors --------------------------------------------------------------------------

    async def own_id(self, session: Session, message: dict) -> dict:
        """The register `message`, with an id of its own where the one it
        asks for is held by another executor process that is alive (it
        answers a ping): a workdir copied with its id, or an executor coming
        back to a coordinator on a new catalog that has given its id to a
        newcomer meanwhile. Taken over, each register closed the other's
        connection, every half second, for ever. The same process coming
        back (a reset connection), or one whose holder does not answer
        (gone, frozen), takes the id as before."""
        executor_id, instance = message.get("executor"), message.get("instance")
        held = self.connected.get(executor_id)
        if held is None or held.session is session or instance is None or held.instance in (None, instance):
            return message
        try:
            await held.session.request("ping", timeout=_PING_TIMEOUT)
        except RequestError:
            pass  # (an answer all the same: alive)
        except (ConnectionLost, TimeoutError):
            return message
        if self.connected.get(executor_id) is not held:
            return message  # (gone meanwhile)
        fresh = self._new_executor_id()
        log.warning("executor id %s is held by a live executor at %s: the one registering from %s is given "
                    "%s (a workdir copied with its executor.json, or a new catalog?)", executor_id,
                    held.record.host, message.get("host"), fresh)
        return {**message, "executor": fresh}

    def _new_executor_id(self) -> str:
        """An id neither the catalog nor this master has given: an executor
        whose row could not be written (the catalog locked, a full disk) is
        known only here, and two new executors were both given e1."""
        n = len(self.executors) + 1  # (every executor of the catalog is here)
        while f"e{n}" in self.executors:
            n += 1
        return f"e{n}"

    def register(self, session: Session, message: dict) -> Executor:
        executor_id = message.get("executor")
        cores, host = message["cores"], message["host"]
        cores_ok = isinstance(cores, int) and 1 <= cores <= LARGEST_INTEGER  # (the catalog holds no more)
        if not cores_ok or not isinstance(host, str) or not host:
            raise RequestError("register: cores must be a positive int (below 2**63) and host a name")
        now = time.time()
        if executor_id not in self.executors:
            executor_id = self._new_executor_id() if not executor_id else executor_id
            self.executors[executor_id] = Executor(executor_id, host, cores, "up", now, now)
        executor = self.executors[executor_id]
        executor.host, executor.cores, executor.state, executor.last_seen = host, cores, "up", now
        executor.timeout = self.executor_timeout  # (the register's answer tells it)
        self._save_executor(executor)
        self._away.pop(executor_id, None)  # back within its lease
        # (back after a stop on purpose whose "left" was lost, or that was never said,
        # the executor stopped while it could not reach a coordinator: its jobs move,
        # as they would have)
        stopped = executor_id in self._leaving
        stopped_processes = _stopped_processes(message.get("stopped"))
        if stopped_processes:
            log.info("executor %s was stopped on purpose while it could not tell the coordinator: the jobs "
                     "whose processes it stopped move without spending a restart", executor_id)
        self._leaving.discard(executor_id)
        old = self.connected.get(executor_id)
        if old is not None and old.session is not session:
            self._spawn(old.session.close())
        self.connected[executor_id] = Connected(executor, session, time.monotonic(), message.get("instance"))
        session.name = f"executor {executor_id} at {host}"
        log.info("executor %s registered: %s, %d core(s)", executor_id, host, cores)
        # (the catalog the executor served last: that of each process it lists that names
        # none, an executor of before; a note of another catalog's processes names none of
        # ours, whatever their ids)
        theirs = message.get("catalog")
        self._adopt(executor_id, message.get("processes") or [], theirs, stopped,
                    coordinator_away=self.cut_off_by_us(executor_id),
                    stopped_processes=frozenset() if self.foreign(theirs) else stopped_processes)
        self._cut_off_by_us.pop(executor_id, None)
        self._notify()
        self.reconcile()
        return executor

    def foreign(self, catalog) -> bool:
        """Is `catalog`, the identity an executor says a process (or itself)
        is of, another catalog's than ours? Job ids are one catalog's: its
        job-1 is not ours. (None, either side: not known, taken as ours.)"""
        ours = self.catalog.identity
        return catalog is not None and ours is not None and catalog != ours

    def cut_off_by_us(self, executor_id: str) -> bool:
        """Was the executor cut off by this coordinator's absence (restarted
        since it last heard from it, or stalled a moment ago)?"""
        return self._cut_off_by_us.get(executor_id, -math.inf) >= time.monotonic()

    def _stalled(self, gap: float, now: float) -> None:
        """This coordinator did not run for `gap` seconds (frozen: SIGSTOP, a
        paused VM, a debugger): it heard nobody, so no executor is judged
        silent for that time; and what they report lost as cut off meanwhile
        (fenced) spends no restart. Each was counted lost the moment it woke,
        every job restarted (or failed, at --max-restarts 0)."""
        log.warning("the coordinator did not run for %.1f s (frozen? overloaded?): the executors' silence "
                    "meanwhile is not counted against them", gap)
        for entry in self.connected.values():
            entry.heard += gap
        self._away = {e: (deadline + gap, why) for e, (deadline, why) in self._away.items()}
        for executor_id in [*self.connected, *self._away]:
            until = self._cut_off_by_us.get(executor_id, -math.inf)
            self._cut_off_by_us[executor_id] = max(until, now + self.executor_timeout)

    def _adopt(self, executor_id: str, processes: list[dict], listed_for: str | None = None,
               stopped: bool = False, coordinator_away: bool = False,
               stopped_processes: frozenset = frozenset()) -> None:
        """An executor (re)connected and listed its processes: keep those of
        current attempts, take in the exits we missed, stop the stale ones
        (every one of another catalog's jobs: each judged by the catalog it
        names, else by `listed_for`, the executor's), and restart the
        jobs whose process it no longer has (moved, no restart spent, when it
        was `stopped` on purpose, or the process is one of `stopped_processes`:
        (job, attempt, process) it noted stopping while it could not reach the
        coordinator). `coordinator_away`: it served the last
        coordinator, and a loss while it was cut off from it (fenced) spends
        no restart."""
        for job_id, executors in self._unstopped.items():
            if executor_id in executors:
                self._ask_to_confirm(job_id, executor_id)
        reported = set()
        for p in processes:
            # (per process: one of an earlier catalog's job, still stopping, was listed
            # under the catalog the executor serves now, and adopted as our job of its id)
            foreign = self.foreign(p.get("catalog") or listed_for)
            job = self.jobs.get(p["job"])
            current = (not foreign and job is not None and job.status in ("starting", "running")
                       and job.attempt == p["attempt"] and p["process"] < len(job.placement)
                       and job.placement[p["process"]]["executor"] == executor_id)
            if current:
                reported.add((job.id, p["process"]))
                if p.get("dashboard") and p.get("code") is None:  # (said while no coordinator heard it)
                    job.placement[p["process"]]["dashboard"] = p["dashboard"]
                    self._save(job)
                if p.get("code") is not None:
                    away = coordinator_away and bool(p.get("cut_off"))
                    self._spawn(self.process_exited(job.id, p["attempt"], p["process"], p["code"],
                                                    p.get("error"), coordinator_away=away))
                elif job.status == "starting" and not self._lock(job.id).locked():
                    self._adopt_starting(job, p["process"])
            elif p.get("code") is None and not foreign and job is not None \
                    and self._may_hold(job, executor_id):
                # (an earlier attempt of ours running on: waited for until it has stopped, as
                # one held in the job's row is; asked once, not waited for, a job submitted
                # again on its state_dir started beside it while it stopped, up to STOP_TIMEOUT)
                if executor_id not in job.unstopped:
                    self._hold(job, {executor_id})
                    self._save(job)
                self._ask_to_confirm(job.id, executor_id)
            elif p.get("code") is None:
                # (another catalog's, whose job ids may be ours: stopped by its own attempt,
                # never held under our job of the same id; or one of a job being started)
                # (its catalog's only: ours of that job and attempt may run there beside it, a
                # process of ours placed there since, and that stop ended it, a restart spent)
                session = self.connected[executor_id].session
                self._spawn(session.request("stop", timeout=STOP_TIMEOUT, job=p["job"], attempt=p["attempt"],
                                            catalog=p.get("catalog") or listed_for))
        for job in self.jobs.values():
            if job.status not in ("starting", "running") or self._lock(job.id).locked():
                continue  # (a job being started now is not one to adopt)
            for i, place in enumerate(job.placement):
                if place["executor"] == executor_id and (job.id, i) not in reported:
                    moved = stopped or (job.id, job.attempt, i) in stopped_processes
                    self._spawn(self._lost_process(job, job.attempt, i, executor_id, moved))

    def _may_hold(self, job: Job, executor_id: str) -> bool:
        """Whether a process of an earlier attempt of the job that `executor_id`
        lists may be held until it confirms it stopped (`_confirm_stopped`, which
        stops every process of the job there): not where a process of the job's
        current attempt runs there, or may be starting (its lock held), which that
        stop would end too."""
        placed = job.status in ("starting", "running") and any(
            p["executor"] == executor_id for p in job.placement)
        return not placed and not self._lock(job.id).locked()

    def _adopt_starting(self, job: Job, process: int) -> None:
        """A job a coordinator was starting when it stopped (its `start`
        requests sent, their replies lost with it), whose processes the
        executors report running: it runs. It stayed `starting` for good
        (started: none), its processes running and adopted."""
        attempt, running = self._adopted.get(job.id, (job.attempt, set()))
        if attempt != job.attempt:
            running = set()
        running.add(process)
        self._adopted[job.id] = (job.attempt, running)
        if len(running) == job.processes:
            del self._adopted[job.id]
            job.status = "running"
            job.started = job.started or time.time()
            self._save(job)
            log.info("%s running (attempt %d, adopted)", job.id, job.attempt)

    async def _lost_process(self, job: Job, attempt: int, process: int | None, executor_id: str,
                            stopped: bool = False) -> None:
        if stopped:
            why = _stopped(executor_id)
        elif process is None:
            why = f"executor {executor_id} is not connected"
        else:
            why = f"executor {executor_id} no longer runs process {process} (it restarted)"
        async with self._lock(job.id):
            if not self._done_on(job, attempt, executor_id, stopped):
                await self._restart_locked(job, attempt, why, counted=not stopped)
        self.reconcile()

    def _done_on(self, job: Job, attempt: int, executor_id: str, stopped: bool = False) -> bool:
        """Has every process of the attempt on `executor_id` exited 0, its
        part done (or, not `stopped`, exited, heard: below)? Then losing that
        executor (stopped for a rolling restart, or started again) loses
        nothing: the job was run again from its start for it (a restart
        spent, when the executor was not stopped on purpose). `stopped`: it
        was stopped on purpose."""
        mine = [i for i, p in enumerate(job.placement) if p["executor"] == executor_id]
        exits = self.exits.get(job.id, {})
        if job.attempt != attempt or not mine:
            return False
        if stopped:  # (not where a peer failed meanwhile, its exit held for this leave: `process_exited`)
            return all(exits.get(i, (None,))[0] == 0 for i in mine) and all(c == 0 for c, _ in exits.values())
        # One not stopped loses nothing where each of its processes has exited, heard: 0, or
        # one whose exit, held for another executor's stop, moves the job free then. (Asked as
        # of a stopped one, an executor lost, or started again, its part done or its process's
        # exit held, failed the job, a restart spent.)
        return all(i in exits for i in mine)

    def heard_from(self, executor_id: str) -> None:
        executor = self.executors.get(executor_id)
        if executor is not None:
            executor.last_seen = time.time()
        entry = self.connected.get(executor_id)
        if entry is not None:
            entry.heard = time.monotonic()

    def disconnected(self, executor_id: str, session: Session) -> None:
        entry = self.connected.get(executor_id)
        if entry is None or entry.session is not session:
            return  # replaced by a newer connection
        del self.connected[executor_id]
        if self._closing:
            return  # (the coordinator stops: the next one waits for it)
        # Not lost yet: a connection reset by the network closes it with the
        # executor and its processes alive. Counted lost at once, its jobs
        # were started elsewhere while their processes ran on until it came
        # back (~0.3 s) or fenced them (0.8 of the timeout): two attempts at
        # once. It keeps its jobs if it registers again within its lease.
        executor = self.executors[executor_id]
        # (one stopped on purpose, its "left" not said, stays `leaving` in the catalog: saved
        # `reconnecting`, a coordinator restarted before its lease's end took it for one of a
        # cut cable, and a peer's exit held for its "left" (`process_exited`), listed again,
        # failed the job, a restart spent)
        executor.state = "leaving" if executor_id in self._leaving else "reconnecting"
        self._save_executor(executor)
        self._away[executor_id] = (entry.heard + self.executor_timeout,
                                   f"its connection closed, and it did not come back within "
                                   f"{self.executor_timeout:g} s")
        log.warning("executor %s: its connection closed; its jobs stay placed until it registers again, "
                    "or until it is lost, %g s after it was last heard from", executor_id,
                    self.executor_timeout)
        self._notify()

    def executor_leaving(self, executor_id: str) -> None:
        """The executor is being stopped (Ctrl-C, SIGTERM) and stops its job
        processes now: no job is placed on it any more (`free_cores`); its
        "left" follows once they have stopped."""
        executor = self.executors.get(executor_id)
        if executor is None:
            return
        executor.state = "leaving"
        self._leaving.add(executor_id)
        self._save_executor(executor)
        log.info("executor %s is stopping: no job is placed on it any more, and its jobs move without "
                 "spending a restart", executor_id)
        self._notify()

    def executor_left(self, executor_id: str) -> None:
        """The executor was stopped (Ctrl-C, SIGTERM) and has stopped its job
        processes: lost now, its jobs restarted elsewhere at once, rather
        than when its lease is over (the connection closing next is no
        news)."""
        self.connected.pop(executor_id, None)
        self._spawn(self.executor_lost(executor_id, "it was stopped, its job processes first"))

    async def watch(self, interval: float = WATCH_EVERY) -> None:
        """Executors silent for `executor_timeout` are lost; after the
        adoption grace, so are those that never came back to a restarted
        coordinator (and their jobs restart)."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            # (a round late by STALLED of the timeout: this coordinator stalled; any
            # less cannot make an executor heard from a heartbeat ago look lost)
            if now - last - interval > STALLED * self.executor_timeout:
                self._stalled(now - last - interval, now)
            last = now
            for executor_id, entry in list(self.connected.items()):
                if now - entry.heard > self.executor_timeout:
                    log.warning("executor %s silent for %.1f s", executor_id, now - entry.heard)
                    del self.connected[executor_id]  # (its lease is over: lost, not away)
                    self._spawn(entry.session.close())
                    why = f"no heartbeat for {self.executor_timeout:g} s"
                    self._spawn(self.executor_lost(executor_id, why))
            for executor_id, (deadline, why) in list(self._away.items()):
                if now > deadline:
                    del self._away[executor_id]
                    self._spawn(self.executor_lost(executor_id, why))
            if now - self._started > self.adopt_grace:
                self._orphans()
            self._save_again()
            self.reconcile()

    def _orphans(self) -> None:
        """A backstop: a job placed on an executor that is not connected
        (a coordinator killed between losing the executor and restarting
        the job) is restarted."""
        for job in self.jobs.values():
            if job.status not in ("starting", "running") or self._lock(job.id).locked():
                continue
            away = [p["executor"] for p in job.placement if p["executor"] not in self.connected
                    and p["executor"] not in self._away]  # (those may come back: lost at their lease's end)
            if away:
                self._spawn(self._lost_process(job, job.attempt, None, away[0], away[0] in self._leaving))

    # -- as data ----------------------------------------------------------------------------

    def status(self) -> dict:
        executors = [{"id": e.id, "host": e.host, "cores": e.cores, "free": self.free_cores(e.id),
                      "state": e.state, "last_seen": e.last_seen} for e in self.executors.values()]
        jobs = [{"id": j.id, "name": j.name, "status": j.status, "message": j.message,
                 "placement": [p["executor"] for p in j.placement], "processes": j.processes,
                 "dashboards": [p.get("dashboard") for p in j.placement],
                 "cores": j.cores, "restarts": j.restarts, "attempt": j.attempt,
                 "submitted": j.submitted, "started": j.started, "ended": j.ended}
                for j in self.jobs.values()]
        # (the topics as of the catalog's last change of them: no call, answered at once)
        return {"executors": executors, "jobs": jobs, "topics": self.catalog.listing}

    def job_status(self, job_id: str) -> dict:
        return next(j for j in self.status()["jobs"] if j["id"] == self._job(job_id).id)

    async def close(self) -> None:
        """The coordinator stops: nothing more is started, and the
        connections its server closes next lose no executor."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()

    async def report_unsaved(self) -> None:
        """(The coordinator stops, its catalog closed: every write made has
        run, or failed at once, a lock no longer waited for.) The jobs and
        executors the catalog does not hold as they are, said in one line
        with what they are: a next coordinator starts from the catalog, so an
        operator knows what it is behind on. (They were dropped without a
        word: the catalog locked by a backup as the coordinator stopped.)
        A catalog file deleted while it ran: all of them, the catalog gone."""
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=STOP_TIMEOUT)
        # (its file deleted under it, `rm -rf` of --data: SQLite wrote on into
        # it, every write a success, and the stop said nothing; all it holds
        # is lost to the next coordinator, which starts from an empty catalog)
        gone = self.catalog.gone()
        job_ids = self.jobs if gone else self._unsaved_jobs
        jobs = sorted((self.jobs[j] for j in job_ids if j in self.jobs), key=lambda j: j.seq)
        unsaved = [f"{job.id} ({job.status}, attempt {job.attempt}, {job.restarts} "
                   f"restart{'' if job.restarts == 1 else 's'})" for job in jobs]
        executor_ids = self.executors if gone else self._unsaved_executors
        unsaved += [f"executor {e} ({self.executors[e].state})" for e in sorted(executor_ids)
                    if e in self.executors]
        if gone:
            log.error("the coordinator stops with the catalog %s gone (deleted or replaced while it ran): "
                      "not saved: %s", self.catalog.path, ", ".join(unsaved) or "nothing it held")
        elif unsaved:
            log.error("the coordinator stops with the catalog %s behind: not saved: %s (%s)",
                      self.catalog.path, ", ".join(unsaved), self._write_error or "not written")


def _stopped(executor_id: str) -> str:
    """The message of a job moved off an executor stopped on purpose."""
    return f"moved off executor {executor_id}, which was stopped on purpose (not a failure: no restart spent)"


def _stopped_processes(said) -> frozenset:
    """A register's `stopped` (the executor's `_note_stopped`): the
    [job, attempt, process] it stopped on purpose while it could not reach
    the coordinator, as a set of tuples; anything else, none."""
    if not isinstance(said, list):
        return frozenset()
    return frozenset(tuple(s) for s in said if isinstance(s, list) and len(s) == 3 and isinstance(s[0], str)
                     and all(isinstance(n, int) and not isinstance(n, bool) for n in s[1:]))


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


__all__ = ["ACTIVE", "TERMINAL", "JobMaster", "classify"]
