"""`python -m kernel executor --coordinator HOST:PORT --cores N [--workdir DIR] [--host NAME]`.

Registers with the coordinator and keeps its connection: a heartbeat every
`--heartbeat` seconds (1), its processes' exits as they happen. On request it
starts a job's process (`python -m kernel run FILE:FLOW --cores N ...`,
with `--process-id`/`--peers` when the job has several, and the executor's
own `--tls-cert`/`--tls-key`/`--tls-ca` for their links when it has
them), stops one, finds
a free port for one, and serves its log.

The pipeline file comes with the request and is kept under
`WORKDIR/pipelines/SHA256/NAME.py` (checked against its hash): no shared
file system. Each job's output (stdout and stderr of every attempt that ran
here) goes to `WORKDIR/logs/JOB.log`.

A job process dies with its executor (PR_SET_PDEATHSIG), so a lost
executor leaves nothing running that the coordinator would start again
elsewhere. When the coordinator goes away, the processes keep running: the
executor reconnects (every RECONNECT seconds; one that refuses it, backing
off from RECONNECT to REFUSED_MOST), registers under the same id
(kept in `WORKDIR/executor.json`) and lists its processes, running and
ended (the exits it could not report noted there too, for the next
executor on its workdir: `_note_unreported`), so a restarted coordinator
adopts them. Unless it stays away for
FENCE_SHARE of its executor timeout: cut off that long, the executor kills
its job processes (`_fence`), before the coordinator, which counts it lost
at the timeout, starts them elsewhere; each job process also holds that
lease itself (`kernel.cli._lease`), for an executor frozen. A coordinator
that refuses its secret ends it (`SecretRefused`: exit 1 from the CLI), as
does one whose TLS certificate does not verify (`CertificateUntrusted`).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kernel._durable import fsync_directory, make_directories
from kernel.cli._lease import STOP_SIGNALS, LeaseWriter
from kernel.cli._lease import VARIABLE as LEASE_VARIABLE
from kernel.dataflow._errors import KernelError
from kernel.execution._cluster import LISTEN_FD_VARIABLE, PEERS_HELD_VARIABLE
from kernel.net._causes import untrusted_certificate
from kernel.net._links import AuthenticationFailed, LinkRefused, backoff
from kernel.system._job_cgroup import JobCgroups, is_member, join_in_child
from kernel.system._logs import LOG_CHUNK, log_piece
from kernel.system._wire import (
    EXECUTOR,
    ConnectionLost,
    RequestError,
    Session,
    _url_host,
    answer_by,
    dial,
    file_bytes,
    tls_handshake_failure,
)

log = logging.getLogger("kernel.system")

HEARTBEAT = 1.0  # seconds between heartbeats (--heartbeat)
# seconds a port prepared for a job process's links is held for its start
# (the coordinator's start follows its prepare at once; one that never comes,
# a coordinator gone between the two, frees it then, by a timer: freed at a
# later prepare or start, it stayed taken for as long as none came)
PREPARED_FOR = 120.0
SILENT_BEATS = 5  # heartbeats a coordinator may leave unanswered before it is dropped
RECONNECT = 0.5
# A coordinator that refuses the connection before authenticating it (over
# its limit of pending connections, refusing this executor's TLS
# certificate: `LinkRefused`) is dialled again after RECONNECT seconds,
# doubling up to REFUSED_MOST, jittered (`kernel.net._links.backoff`). It was
# dialled 13 times in 2 s (the dial's own retries, 10 ms apart at first),
# then again after 0.5 s, for ever, a refusal in the coordinator's log at
# each. One that is not there is dialled every RECONNECT seconds, still: a
# coordinator restarting adopts the jobs of executors back within its lease.
REFUSED_MOST = 10.0
STOP_GRACE = 3.0  # seconds between SIGINT and SIGKILL when stopping a process
LEAVE_TIMEOUT = 2.0  # seconds a stopped executor waits for the coordinator to take its leave
# Fencing: cut off from the coordinator for this share of its executor
# timeout (which it sends at registration), the executor kills its job
# processes, before the coordinator counts it lost and starts them elsewhere.
FENCE_SHARE = 0.8
# Each job process holds a lease to the same end (kernel.cli._lease), for an
# executor frozen, which cannot fence: it ends itself halfway between the
# executor's fence (so a live executor fences first, and says why) and the
# timeout.
LEASE_SHARE = (1 + FENCE_SHARE) / 2
DASHBOARD_POLL = 0.05  # seconds between reads of a starting process's output for its dashboard's URL
# what `kernel run` prints once its dashboard listens (`kernel.metrics.url`)
# (at a line's end: a pipeline's output not ended by a newline comes before it on its line)
_DASHBOARD_SAID = re.compile(rb"dashboard on http://[^\s/]+:(\d+)/$")
_LINE_MOST = 4096  # bytes of an unfinished line kept while looking for it
_KEEP_ENDED = 256  # ended processes remembered for a coordinator that reconnects


class WorkdirInUse(KernelError):
    """Another executor runs on this workdir."""


class SecretRefused(KernelError):
    """The coordinator refused this executor's secret: it never will take it."""


class CertificateUntrusted(KernelError):
    """The coordinator's TLS certificate does not verify with this
    executor's --tls-ca, for the address it dials: it never will."""


@dataclass
class JobProcess:
    job: str
    attempt: int
    process: int
    proc: asyncio.subprocess.Process
    log_path: Path
    log_start: int  # where this attempt's output starts in the log
    lease: LeaseWriter  # (renewed by _fence's loop)
    code: int | None = None
    error: str | None = None
    ended_at: float | None = None
    pipeline: Path | None = None  # this executor's copy of the file it runs
    dashboard: str | None = None  # its dashboard's URL, once it said it listens (`_find_dashboard`)
    fenced: bool = False  # killed by `_fence`: the coordinator did not answer
    # it ended while this executor was cut off from the coordinator (no connection, or no
    # answer for a while): a coordinator restarted meanwhile spends no restart of the job
    # for it, when it was a loss, not the job's own failure (`JobMaster._adopt`)
    cut_off: bool = False
    followed: asyncio.Task | None = None  # `_follow`'s: its exit seen, reported or noted
    # a pidfd of it (None: Linux < 5.3), open until `_follow` sees its exit: whether it has
    # ended, told also where its pid is another's since (`_has_ended`)
    pidfd: int | None = None
    # its pid was free already as its pidfd was opened (`_pidfd`): it has ended, reaped by
    # asyncio's watcher thread, its exit not yet seen (asked by its pid, a process given
    # that pid since was taken for it)
    gone: bool = False
    # the cgroup it runs in, made for it, whose processes are ended with it
    # (`kernel.system._job_cgroup`); None: its process group is (`_end_group`)
    cgroup: str | None = None
    # the identity of the catalog whose coordinator started it (None: one that told
    # none). Job ids are one catalog's: listed under the catalog this executor serves
    # now, a process of an earlier catalog's job-1, still stopping, was taken for the
    # new catalog's job-1 (`JobMaster._adopt`), and its exit for that job's
    catalog: str | None = None

    def report(self) -> dict:
        return {"job": self.job, "attempt": self.attempt, "process": self.process,
                "code": self.code, "error": self.error, "dashboard": self.dashboard, "cut_off": self.cut_off,
                "catalog": self.catalog}


def _job_process_setup(cgroup: str | None = None) -> None:
    """In the job process before exec: into its `cgroup` where it has one
    (`kernel.system._job_cgroup`); SIGKILL it when the executor dies
    (even by SIGKILL), as the kernels die with their launcher; and let
    SIGINT stop it (Ctrl-C's way, what `stop` sends first) even when the
    executor was started with SIGINT ignored (a shell's background job),
    which an exec would pass on. SIGINT and SIGTERM stay blocked (a mask
    survives exec) until `kernel run` can say "interrupted" or "terminated"
    (`_let_stop_signals_in`): a `kill` of a job still starting (importing,
    under load) ended it with a KeyboardInterrupt traceback in its log."""
    import ctypes

    if cgroup is not None:
        join_in_child(cgroup)
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


_ON_RECORD = "  on record: "  # (the line after an OperatorError's: `kernel.OperatorError.__str__`)


def last_error(path: Path, start: int) -> str | None:
    """The last `error: ...` line `kernel run` printed after `start`, with
    the record it names on the next line, if any (`...: function 'check'
    raised ValueError: bad; on record: (0, 777)`): the job's message named
    the step and the function but not the record, which `kernel run` shows."""
    try:
        with open(path, "rb") as f:
            f.seek(max(start, os.path.getsize(path) - (256 << 10)))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = text.splitlines()
    at = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    if not at:
        return None
    error = lines[at[-1]][len("error: "):]
    for following in lines[at[-1] + 1:]:  # (after the rest of a message of several lines)
        if not following.strip():
            break  # (then the traceback)
        if following.startswith(_ON_RECORD):
            error += f"; {following.strip()}"
            break
    return error[:2000]


class ExecutorDaemon:
    def __init__(self, address: tuple[str, int], secret: bytes, cores: int, workdir: str | Path,
                 host: str | None = None, tls=None, heartbeat: float = HEARTBEAT,
                 dashboard_host: str | None = None) -> None:
        self.address = address
        # each job process serves its dashboard (and /metrics) on a free port of this address
        self.dashboard_host = dashboard_host
        self.heartbeat = heartbeat
        self.secret = secret
        self.cores = cores
        self.workdir = Path(workdir).resolve()
        self.host = host or socket.gethostname()
        self.tls = tls
        self.processes: dict[tuple[str, int, int], JobProcess] = {}
        self.session = None
        self._fence_after: float | None = None  # seconds without an answer before fencing
        self._answered = time.monotonic()  # when the coordinator last answered
        self._interval = heartbeat  # the heartbeat's as beaten (cut for the coordinator's timeout)
        self._leaving = False  # stopping (`_leave`): `start` is refused
        # `_leave` runs: its close() keeps the workdir's lock, which it lets go after "left"
        self._saying_left = False
        self._closed = False  # close() has begun: `start` is refused
        # (job, attempt, process) of the job processes stopped on purpose (`close`, `_note_stopped`)
        self._stopped_here: set[tuple[str, int, int]] = set()
        # this process's token: the coordinator tells it from another live
        # executor registering under the same id (`JobMaster.own_id`)
        self._instance = os.urandom(16).hex()
        self._tasks: set[asyncio.Task] = set()
        # one job process started at a time, its pidfd opened before the next (`_start`)
        self._spawning = asyncio.Lock()
        # port -> (its sockets, listening since `prepare`; the timer that frees them unstarted)
        # (several on a name of several addresses of this machine: localhost, 127.0.0.1 and ::1)
        self._prepared: dict[int, tuple[list[socket.socket], asyncio.TimerHandle]] = {}
        self._cgroups = JobCgroups.here()
        for sub in ("pipelines", "logs", "jobs"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        self._id_file = self.workdir / "executor.json"
        # One executor per workdir: its id (executor.json) is the workdir's,
        # and two executors started on one (./kernel-executor, the default)
        # registered under one id, each replacing the other's connection every
        # 0.5 s for ever, one executor seen and its jobs restarted at each turn.
        # The lock goes with the process (a SIGKILLed executor's too); job
        # processes do not inherit it (close_fds).
        self._workdir_lock = open(self.workdir / "executor.lock", "a+")
        try:
            fcntl.flock(self._workdir_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._workdir_lock.seek(0)
            holder = self._workdir_lock.read().strip() or "?"
            self._workdir_lock.close()
            raise WorkdirInUse(f"the workdir {self.workdir} is in use by another executor (pid {holder}): "
                               "give each executor a --workdir of its own") from None
        self._workdir_lock.truncate(0)
        self._workdir_lock.write(str(os.getpid()))
        self._workdir_lock.flush()
        # executor.json as read at the start, then as registered: kept here
        # too, as the workdir may be deleted under the executor (a tmp
        # cleaner): re-read, it was gone, and the next register took a new
        # id, its running jobs stopped as strangers' and restarted
        try:
            record = json.loads(self._id_file.read_text())
        except (OSError, ValueError):
            record = None
        self._record: dict = record if isinstance(record, dict) else {}

    @property
    def executor_id(self) -> str | None:
        return self._recorded("id")

    def _recorded(self, key: str) -> str | None:
        """`executor.json`'s `key`: its `id`, and the `catalog` whose jobs it ran last."""
        value = self._record.get(key)
        return value if isinstance(value, str) else None

    def _remember(self, record: dict, lost: str | None = None) -> None:
        """Keep `record` as executor.json; where it cannot be written, warn
        with `lost`, what only this process now knows (by default its id:
        the warning said so also where an exit's note was what was lost)."""
        self._record = record
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)  # (deleted under it: made again)
            # (whole or not at all: it is written as job processes end too, and one cut
            # short by a kill meanwhile lost the id, the next register took a new one)
            partial = self._id_file.with_suffix(".partial")
            try:
                partial.write_text(json.dumps(record))
                partial.replace(self._id_file)
            except OSError:
                # (a write cut short by a full disk left an empty executor.partial
                # behind, for good: taken away, it holds nothing of use)
                partial.unlink(missing_ok=True)
                raise
        except OSError as exc:  # (a full disk: it goes on, by the id it holds)
            log.warning("executor: cannot write %s (%s): %s", self._id_file, exc,
                        lost or f"its id {record.get('id')} is kept in memory only")

    def _catalog_seen(self, catalog: str | None) -> None:
        """The coordinator's catalog is `catalog` (its register reply). Job
        ids are one catalog's (`job-1` on): one that is not the catalog whose
        jobs this executor ran (a coordinator started on a new --data, its
        catalog deleted) gives them again. So that catalog's job logs and
        directories go aside, to `WORKDIR/previous/CATALOG/`, and its ended
        processes are forgotten: a new job-7 was refused as `job-7 attempt 1
        process 0 already runs here` (the earlier job-7's, ended), failed
        after its restarts, and its log began with the earlier one's."""
        before = self._recorded("catalog")
        if catalog is None or before is None or before == catalog:
            return
        for key, entry in list(self.processes.items()):
            if entry.code is not None:
                del self.processes[key]
        name = before if before.isalnum() else "catalog"  # (a name, whatever executor.json was made to say)
        aside = self.workdir / "previous" / name
        n = 1
        while aside.exists():  # (back to a catalog once left: what it left then stays too)
            aside, n = self.workdir / "previous" / f"{name}.{n}", n + 1
        try:
            aside.mkdir(parents=True)
            for sub in ("logs", "jobs"):
                if (self.workdir / sub).exists():
                    (self.workdir / sub).rename(aside / sub)  # (a process still running writes on there)
                (self.workdir / sub).mkdir()
        except OSError as exc:  # (it serves on all the same: a log may then begin with an older job's)
            log.warning("executor: the coordinator's catalog is not the one whose jobs this executor ran, "
                        "and their logs and job directories cannot be moved to %s: %s", aside, exc)
            return
        log.warning("executor: the coordinator's catalog is not the one whose jobs this executor ran (a new "
                    "--data?): their logs and job directories are moved to %s", aside)

    async def run(self, ready=None) -> None:
        """Serve the coordinator until cancelled, reconnecting when it goes."""
        if self._closed:
            # (its workdir's lock let go, its starts refused: run again, it registered,
            # and every job placed on it failed to start, `executor e1 is stopping`,
            # a restart spent each, beside a next executor free to take the workdir)
            raise RuntimeError(f"the executor on {self.workdir} is closed (close()): it cannot run again; "
                               "start a new one")
        announced = None  # the failure to dial last logged: each kind once, not every RECONNECT
        refusals = None  # the pauses after each refusal in a row (`backoff`), until one registers
        fence = asyncio.ensure_future(self._fence())
        try:
            while True:
                try:
                    # (one try each: the pause before the next is this loop's)
                    session, http = await dial(self.address, self.secret, EXECUTOR, self._request,
                                               tls=self.tls, timeout=RECONNECT * 4, retry=False)
                except AuthenticationFailed:
                    # The coordinator's own word that our secret is not its own: no
                    # retry can change that. Retried every 0.5 s, it went on for ever,
                    # the coordinator logging a refusal each time and the operator's
                    # supervisor seeing a healthy process. An executor cut off this
                    # way has its job processes fenced anyway (no answer).
                    # (Said as the system's, not as `exc` says it, a cluster's words:
                    # "authentication failed with process 0 at http://...".)
                    raise SecretRefused(
                        f"the coordinator at {_url_host(self.address[0])}:{self.address[1]} refused this "
                        "executor's secret (authentication failed: wrong or missing secret): start it with "
                        "the system's KERNEL_SECRET or --secret-file") from None
                except Exception as exc:  # not there (yet), unreachable, refusing us: try again
                    self._refuse_untrusted_certificate(exc)
                    refused = isinstance(exc, LinkRefused)
                    announced = self._announce_dial_failure(exc, announced, refused)
                    if refused:
                        refusals = refusals or backoff(RECONNECT, REFUSED_MOST)
                    await asyncio.sleep(next(refusals) if refused else RECONNECT)
                    continue
                announced = None
                pause = RECONNECT
                try:
                    reader = asyncio.ensure_future(session.run())
                    # (with the exits noted unreported, `_note_unreported`: by a
                    # stopped executor on this workdir, or by this one)
                    listed = [p.report() for p in self.processes.values()]
                    listed += [e for e in self._noted_exits() if _key(e) not in self.processes]
                    # (`stopped`: the job processes the last executor on this workdir stopped
                    # on purpose, unable to tell the coordinator, `_note_stopped`)
                    reply = await session.request(
                        "register", executor=self.executor_id, instance=self._instance, host=self.host,
                        cores=self.cores, catalog=self._recorded("catalog"),
                        processes=listed, stopped=self._record.get("stopped") or [])
                    self._catalog_seen(reply.get("catalog"))
                    # (a coordinator that tells none, its catalog locked as it started: the one known;
                    # the notes it has heard now dropped, those of exits since kept)
                    heard = {_key(p) for p in listed if p.get("code") is not None}
                    later = [e for e in self._noted_exits() if _key(e) not in heard]
                    self._remember({"id": reply["executor"],
                                    "catalog": reply.get("catalog") or self._recorded("catalog"),
                                    **({"ended": later} if later else {})})
                    self._answered = time.monotonic()
                    refusals = None
                    interval = self.heartbeat
                    if reply.get("executor_timeout"):
                        timeout = float(reply["executor_timeout"])
                        self._fence_after = FENCE_SHARE * timeout
                        # A --heartbeat too long for the coordinator's timeout (3 s
                        # against 2, or 4 against the default 5) had this executor
                        # fence (kill) its own job processes between two answered
                        # beats, and the coordinator count it lost: the jobs were
                        # restarted every few seconds for ever. Beat often enough.
                        most = timeout / SILENT_BEATS
                        if interval > most:
                            log.warning("executor: --heartbeat %g s is too long for the coordinator's "
                                        "executor timeout of %g s: beating every %g s", interval, timeout,
                                        most)
                            interval = most
                    self._interval = interval
                    log.info("executor %s registered with the coordinator at %s:%d (%s, %d cores)",
                             reply["executor"], *self.address, self.host, self.cores)
                    self.session = session
                    self._report_exits_after(listed)
                    if ready is not None:
                        ready(reply["executor"])
                        ready = None
                    beat = asyncio.ensure_future(self._heartbeat(session, interval))
                    try:
                        # shielded: stopped (Ctrl-C, SIGTERM), the session still
                        # carries the leave (`_leave`)
                        await asyncio.shield(reader)
                    except asyncio.CancelledError:
                        await self._leave(session)
                        raise
                    finally:
                        beat.cancel()
                        self.session = None
                    log.warning("executor: the coordinator went away; reconnecting")
                except ConnectionLost as exc:
                    log.warning("executor: %s; reconnecting", exc)
                except RequestError as exc:  # its registration refused: a refusal as any other
                    refusals = refusals or backoff(RECONNECT, REFUSED_MOST)
                    pause = next(refusals)
                    log.warning("executor: %s; reconnecting in %.2g s", exc, pause)
                finally:
                    await session.close()
                    await http.close()
                await asyncio.sleep(pause)
        finally:
            fence.cancel()

    def _refuse_untrusted_certificate(self, exc: Exception) -> None:
        """A coordinator certificate that does not verify is a configuration
        error, as a refused secret is: it was retried every 0.5 s for ever,
        one warning in the executor's log and nothing in the coordinator's,
        a supervisor seeing a healthy process."""
        error = untrusted_certificate(exc)
        if error is None:
            return
        host, why = _url_host(self.address[0]), getattr(error, "verify_message", None) or error
        raise CertificateUntrusted(
            f"the coordinator at {host}:{self.address[1]} presented a TLS certificate that does not "
            f"verify ({why}): start the executor with a --tls-ca that signs the coordinator's "
            f"--tls-cert, a certificate issued for the address it dials ({host})") from None

    def _announce_dial_failure(self, exc: Exception, announced: str | None, refused: bool) -> str:
        """Log why the coordinator cannot be reached, once for each kind of
        failure in a row (retried every RECONNECT seconds, or backing off
        when `refused`): the kind."""
        reason = tls_handshake_failure(exc) if self.tls is not None and refused else None
        kind = "tls" if reason is not None else "refused" if refused else "unreachable"
        if kind == announced:
            return kind
        if kind == "unreachable":
            log.warning("executor: cannot reach the coordinator at %s:%d: %s; retrying every %g s",
                        *self.address, exc, RECONNECT)
        elif kind == "refused":
            log.warning("executor: the coordinator at %s:%d closed the connection before this executor "
                        "authenticated (%s); retrying, each time later, up to every %g s (if this goes on: "
                        "is it over its limit of pending connections, something flooding it?)",
                        *self.address, exc, REFUSED_MOST)
        else:
            log.warning("executor: the TLS handshake with the coordinator at %s:%d failed (%s); retrying, "
                        "each time later, up to every %g s, as it may be restarting (if this goes on: does "
                        "it listen with --tls-cert, and does its --tls-ca sign this executor's "
                        "certificate?)", *self.address, reason, REFUSED_MOST)
        return kind

    async def _leave(self, session) -> None:
        """Stopped while connected: stop the job processes, then tell the
        coordinator they have stopped ("left"), so that it starts their jobs
        elsewhere at once. Without a word it cannot tell a stopped executor
        from one behind a reset connection, and waits out the lease (5 s by
        default). Their exits are not reported one by one (`self.session`
        None): an exit by SIGINT is no failure of the job's."""
        self.session = None
        self._leaving = True
        self._saying_left = True
        try:
            try:
                # first: no job is placed here any more (one started while its
                # processes stopped was left out of them, and restarted, a
                # restart spent, once the executor had left)
                await asyncio.wait_for(session.request("leaving"), LEAVE_TIMEOUT)
            except (ConnectionLost, RequestError, TimeoutError):
                pass
            await self.close()
            await self._report_own_exits(session)
            try:
                await asyncio.wait_for(session.request("left"), LEAVE_TIMEOUT)
            except (ConnectionLost, RequestError, TimeoutError):
                # (the coordinator gone too: it counts this executor lost at its lease's
                # end, unless it is started again on this workdir by then)
                self._note_stopped()
            self._workdir_lock.close()  # (`close`: kept until now)
        finally:
            # (cut short, a second SIGTERM's doing, its job processes maybe still
            # stopping: the lock is the next close()'s to let go, once they have. Let go
            # here, a next executor on the workdir registered under its id and ran
            # their jobs again beside them)
            self._saying_left = False

    async def _report_own_exits(self, session) -> None:
        """Before "left": the exits of job processes that ended on their own
        during the leave (not stopped here: `_stopped_here`), noted, as the
        session was None, by `_follow` (`close()` waits for those that had
        ended as it began), each told as its own (`on_its_own`). Untold, the
        coordinator moved its job free with the rest, as the stop's doing: a
        job whose user function had raised as the executor was stopped ran
        again, its error lost, no restart spent."""
        noted = {_key(e) for e in self._noted_exits()}
        for entry in [p for p in self.processes.values() if p.code is not None and _key(p.report()) in noted]:
            try:
                await asyncio.wait_for(self._report_exit(session, entry, on_its_own=True), LEAVE_TIMEOUT)
            except TimeoutError:  # (noted still: the next register on this workdir lists it)
                return

    async def _heartbeat(self, session, interval: float) -> None:
        """Heartbeats, answered: a coordinator that leaves SILENT_BEATS
        unanswered (gone without a word: a cut cable) is dropped, and the
        executor dials again until it is back."""
        silence = SILENT_BEATS * interval
        while True:
            await asyncio.sleep(interval)
            try:
                await session.request("heartbeat", timeout=silence)
                self._answered = time.monotonic()
            except ConnectionLost:
                return
            except TimeoutError:
                log.warning("executor: the coordinator did not answer for %g s; reconnecting", silence)
                await session.close()
                return

    async def _fence(self) -> None:
        """Kill the job processes once the coordinator has not answered for
        `_fence_after` seconds: cut off (a pulled cable, a partition), this
        executor cannot tell a dead coordinator from one that has counted it
        lost and started its jobs elsewhere, and two attempts of a job must
        not run at once (as Flink's task managers cancel their tasks when
        they lose the job manager). A coordinator back sooner (restarted)
        adopts them still running."""
        while True:
            await asyncio.sleep(min(0.1, self.heartbeat))
            running = [p for p in self.processes.values() if p.code is None]
            deadline = self._lease_deadline()
            for entry in running:
                entry.lease.renew(deadline)
            silent = time.monotonic() - self._answered
            if not running or self._fence_after is None or silent <= self._fence_after:
                continue
            which = ", ".join(f"{p.job} attempt {p.attempt} process {p.process}" for p in running)
            log.warning("executor: no answer from the coordinator for over %g s: stopping %d job process(es) "
                        "(%s), which it starts elsewhere after %g s without a word", self._fence_after,
                        len(running), which, self._fence_after / FENCE_SHARE)
            self._kill_fenced(running)
            await asyncio.gather(*(p.proc.wait() for p in running))

    @staticmethod
    def _kill_fenced(running: list[JobProcess]) -> None:
        """SIGKILL the process groups of `running`, fenced (`_fence`)."""
        for entry in running:
            entry.fenced = True
            if _has_ended(entry):  # (reaped, its pid may be a newcomer's: `_stop_one`)
                continue
            try:
                os.killpg(entry.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _lease_deadline(self) -> float:
        """When the job processes must be dead if nothing renews it (each
        holds it, `kernel.cli._lease`: this executor frozen cannot fence
        them): LEASE_SHARE of the timeout without an answer."""
        if self._fence_after is None:
            return math.inf
        return self._answered + self._fence_after * LEASE_SHARE / FENCE_SHARE

    # -- the coordinator's requests ---------------------------------------------------

    async def _request(self, op: str, m: dict):
        if op == "ping":  # (alive: `JobMaster.own_id`)
            return {}
        if op == "prepare":
            return {"port": await self._prepare_port()}
        if op == "start":
            return await self._start(m)
        if op == "stop":
            await self._stop(m["job"], m.get("attempt"), m.get("catalog"))
            return {}
        if op == "logs":
            return self._log(str(m["job"]), int(m.get("offset", 0)), m.get("raw") is True)
        raise RequestError(f"unknown request {op!r}")

    async def _prepare_port(self) -> int:
        """A port for a job process's links, listening from now on, its
        sockets handed to the process at its start (`_prepared_sockets`). A
        port picked free, closed and bound by the process later could be
        taken in between (another program, an outgoing connection's
        port): the attempt failed, `cannot listen`, a restart spent."""
        found = await _resolved_off_the_loop(self.host)
        if self._leaving or self._closed:
            # (close() may have run while it resolved: the ports it closed did not include
            # this one, made after, which listened on for PREPARED_FOR, or for good where
            # the loop stopped, an app holding the executor)
            raise RequestError(f"executor {self.executor_id} is stopping")
        socks = _listening_sockets(self.host, found)
        port = socks[0].getsockname()[1]
        unstarted = asyncio.get_running_loop().call_later(PREPARED_FOR, self._forget_prepared, port)
        self._prepared[port] = (socks, unstarted)
        return port

    def _prepared_sockets(self, peers: str, process: int) -> list[socket.socket]:
        """The sockets prepared for the port `peers` gives `process` (none:
        none prepared here for it, a coordinator of before's port)."""
        from kernel.execution._cluster import parse_peers

        try:
            port = parse_peers(peers)[process][1]
        except (ValueError, IndexError):
            return []
        prepared = self._prepared.pop(port, None)
        if prepared is None:
            return []
        prepared[1].cancel()
        return prepared[0]

    def _forget_prepared(self, port: int) -> None:
        """Close the sockets prepared for `port` (its start never came, or the executor closes)."""
        prepared = self._prepared.pop(port, None)
        if prepared is not None:
            for sock in prepared[0]:
                sock.close()
            prepared[1].cancel()

    def _pipeline(self, m: dict) -> Path:
        digest, filename, content = m["digest"], m["filename"], file_bytes(m)
        if hashlib.sha256(content).hexdigest() != digest:
            raise RequestError("the pipeline file does not match its hash")
        # (a name, not a path; a name starting with a dot, `.nightly.py`, is one:
        # `kernel run` runs it, and it was refused here as "does not match its
        # hash", the job failing after every restart)
        if "/" in filename or "\0" in filename or filename in (".", ".."):
            raise RequestError(f"the pipeline's name {filename!r} is not a file name")
        path = self.workdir / "pipelines" / digest / filename
        if not _holds(path, digest):
            # A name alone is not the file: a power loss after an unsynced
            # rename can leave it empty or cut short, which was then run as
            # the pipeline. Written again, its data and then its name synced.
            make_directories(str(path.parent))
            partial = path.with_suffix(".partial")
            try:
                with open(partial, "wb") as out:
                    out.write(content)
                    out.flush()
                    os.fsync(out.fileno())
                partial.rename(path)
            except OSError:  # (a full disk: not left behind, cut short, as executor.json's)
                partial.unlink(missing_ok=True)
                raise
            fsync_directory(str(path.parent))
        return path

    async def _start(self, m: dict) -> dict:
        job, attempt, process = m["job"], int(m["attempt"]), int(m["process"])
        if self._leaving or self._closed:
            raise RequestError(f"executor {self.executor_id} is stopping")
        key = (job, attempt, process)
        # (one that ended is no obstacle: the same attempt started again by a
        # coordinator whose catalog could not record it, restarted since)
        held = self.processes.get(key)
        if held is not None and held.code is None:
            if held.catalog is None or held.catalog == self._recorded("catalog"):
                raise RequestError(f"{job} attempt {attempt} process {process} already runs here")
            # Another catalog's (a new catalog gives job ids from job-1 again), stopped
            # at the register that listed it and still stopping (up to STOP_GRACE): the
            # start waits for its end. Refused, the new job-1's first attempt failed, a
            # restart spent for a process that was never its own.
            await self._other_catalogs_ended(held)
            if self._leaving or self._closed:
                raise RequestError(f"executor {self.executor_id} is stopping")
        pipeline = self._pipeline(m)
        argv = [sys.executable, "-m", "kernel", "run", f"{pipeline}:{m['flow']}", "--cores", str(m["cores"])]
        if m.get("state_dir"):
            argv += ["--state-dir", m["state_dir"]]
        if m.get("epoch_interval") and m.get("state_dir"):  # (`run` refuses one without: a job of before)
            argv += ["--epoch-interval", str(m["epoch_interval"])]
        if m.get("peers"):
            argv += ["--process-id", str(process), "--peers", m["peers"]]
            if self.tls is not None:  # the job's links as the system's own connections: over TLS
                # (absolute: the job runs in its own directory)
                files = {"--tls-cert": self.tls.cert, "--tls-key": self.tls.key, "--tls-ca": self.tls.ca}
                argv += [part for flag, path in files.items() if path is not None
                         for part in (flag, os.path.abspath(path))]
        if self.dashboard_host is not None:
            # Port 0: the process binds a port the system picks, and says which
            # (`dashboard on URL`, `_find_dashboard`). A port picked here, free a
            # moment before, could be taken before the process bound it (another
            # program, an outgoing connection): the attempt failed, a restart spent.
            host = self.dashboard_host
            argv += ["--dashboard", f"{f'[{host}]' if ':' in host else host}:0"]
        log_path = self.workdir / "logs" / f"{job}.log"
        run_dir = self.workdir / "jobs" / job
        run_dir.mkdir(parents=True, exist_ok=True)
        # (its workdir deleted under the executor, a tmp cleaner's doing: every
        # start failed, "internal error: FileNotFoundError", and a job placed
        # there failed after its restarts)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, KERNEL_SECRET=self.secret.decode(errors="surrogateescape"),
                   PYTHONUNBUFFERED="1",
                   # topics (issue 18): the job finds its coordinator and names itself
                   KERNEL_COORDINATOR=f"{self.address[0]}:{self.address[1]}", KERNEL_JOB=job,
                   KERNEL_RUN=f"{job}.{attempt}")
        if self.tls is not None and not env.get("KERNEL_TLS"):
            # The job's connections to the coordinator (and its topics') over
            # TLS as the executor's own: told only KERNEL_COORDINATOR, a job of
            # a TLS system that published a topic dialled it in plain HTTP, and
            # failed after 10 s ("cannot reach the coordinator ... Server
            # disconnected"). (Absolute: the job runs in its own directory.)
            env["KERNEL_TLS"] = ",".join(os.path.abspath(path) for path in (self.tls.cert, self.tls.key,
                                                                             self.tls.ca) if path is not None)
        with open(log_path, "ab") as out:
            out.write(f"--- {job} attempt {attempt}, process {process} on executor "
                      f"{self.executor_id} ({time.strftime('%Y-%m-%d %H:%M:%S')}) ---\n".encode())
            out.flush()
            start = out.tell()
            lease = LeaseWriter()
            env[LEASE_VARIABLE] = str(lease.read_fd)
            inherited = (lease.read_fd,)
            listeners = self._prepared_sockets(m["peers"], process) if m.get("peers") else []
            if listeners:  # (its port held since `prepare`: the process serves these sockets)
                env[LISTEN_FD_VARIABLE] = ",".join(str(sock.fileno()) for sock in listeners)
                # (as is every peer's, by its executor, before any process of the job started:
                # the master prepares them all first; its start-up probe may trust a refusal)
                env[PEERS_HELD_VARIABLE] = "1"
                inherited += tuple(sock.fileno() for sock in listeners)
            cgroup = self._cgroups.made()
            try:
                # One at a time, with its pidfd: a process that ended at once, reaped by
                # asyncio's watcher thread before its pidfd was opened, left its pid to
                # the next process made, and where that was this executor's next job
                # process, started meanwhile, the pidfd was that one's: the first was
                # taken for running (`_has_ended`), and its stop signalled the other's
                # group. Started alone, a pid taken since is no child of this executor's
                # (`_has_ended`), or it is free (`gone`).
                async with self._spawning:
                    proc = await asyncio.create_subprocess_exec(
                        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, cwd=run_dir,
                        env=env, start_new_session=True, pass_fds=inherited,
                        preexec_fn=functools.partial(_job_process_setup, cgroup))
                    pidfd, gone = _pidfd(proc.pid)
            except BaseException:
                lease.started()
                lease.close()
                self._cgroups.discard(cgroup)
                raise
            finally:
                for sock in listeners:  # (the process's now; a start that failed frees the port)
                    sock.close()
        lease.started()
        lease.renew(self._lease_deadline())
        entry = JobProcess(job, attempt, process, proc, log_path, start, lease, pipeline=pipeline,
                           pidfd=pidfd, gone=gone, catalog=self._recorded("catalog"))
        if cgroup is not None:
            # (checked: one that could not move in runs where the executor does, and its
            # group is ended instead; one that ended already may have, its cgroup ended)
            if is_member(proc.pid, cgroup) or _has_ended(entry):
                entry.cgroup = cgroup
            else:
                self._cgroups.discard(cgroup)
        self.processes[key] = entry
        log.info("executor: started %s attempt %d process %d (pid %d)", job, attempt, process, proc.pid)
        for work in (self._follow(entry), *([self._find_dashboard(entry)] if self.dashboard_host else [])):
            task = asyncio.ensure_future(work)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            entry.followed = entry.followed or task
        return {"pid": proc.pid, "dashboard": None}  # (its URL follows: `_find_dashboard`)

    async def _other_catalogs_ended(self, held: JobProcess) -> None:
        """Stop `held`, another catalog's process of the (job, attempt,
        process) a start names, and wait for its end, but no longer than the
        start's answer is due (`answer_by`): a RequestError then. One that
        SIGKILL does not end (uninterruptible sleep) was waited for past the
        coordinator's 30 s; its start timed out, the job ran again, and this
        start, still waiting, later ran the earlier attempt beside it."""
        # (shielded: the stop goes on to its SIGKILL where the wait gives up)
        stop = asyncio.ensure_future(self._stop_one(held))
        self._tasks.add(stop)
        stop.add_done_callback(self._tasks.discard)
        due = answer_by.get()
        left = None if due is None else max(0.0, due - time.monotonic())
        try:
            await asyncio.wait_for(asyncio.shield(stop), left)
        except TimeoutError:
            raise RequestError(
                f"{held.job} attempt {held.attempt} process {held.process} of another catalog (the catalog "
                f"this executor served before, pid {held.proc.pid}) is still stopping here, not ended by "
                "SIGKILL yet (uninterruptible sleep: a hung file system?): this start is refused, for the "
                "job to start again") from None

    async def _find_dashboard(self, entry: JobProcess) -> None:
        """Read the process's output, from this attempt's start, until it
        says where its dashboard listens (`kernel run` prints `dashboard on
        http://HOST:PORT/` for a port the system picked), and tell the
        coordinator, whose status and page link to it; a process that ends
        first has none. Only new bytes are read, every DASHBOARD_POLL s."""
        offset, partial = entry.log_start, b""
        while True:
            ended = entry.code is not None  # (read once more after it ended: its last words)
            try:
                with open(entry.log_path, "rb") as f:
                    f.seek(offset)
                    data = f.read(LOG_CHUNK)
            except OSError:
                data = b""
            offset += len(data)
            *lines, partial = (partial + data).split(b"\n")
            partial = partial[-_LINE_MOST:]  # (a line that long is not the one looked for)
            for line in lines:
                found = _DASHBOARD_SAID.search(line.rstrip())
                if found:
                    # (under --dashboard-host as given, a name as a name: the process says its address)
                    host = self.dashboard_host
                    entry.dashboard = f"http://{f'[{host}]' if ':' in host else host}:{int(found.group(1))}/"
                    if self.session is not None:  # (else the next register lists it)
                        try:
                            await self.session.request("dashboard", job=entry.job, attempt=entry.attempt,
                                                       process=entry.process, url=entry.dashboard,
                                                       catalog=entry.catalog)
                        except (ConnectionLost, RequestError, TimeoutError):
                            pass
                    return
            if ended:
                return
            if len(data) < LOG_CHUNK:
                await asyncio.sleep(DASHBOARD_POLL)

    async def _follow(self, entry: JobProcess) -> None:
        entry.code = await entry.proc.wait()
        if entry.pidfd is not None:  # (`returncode` says it from now on)
            os.close(entry.pidfd)
        # What it started and left running (a user's subprocesses: `os.system("... &")`,
        # a Popen not waited for) ends with it, as the kernels of a process stopped do
        # (`_stop_one`): they outlived the job, and the executor's close() too. (Its pid,
        # the group's id, is not given to another process while the group has members;
        # given once it has none, it is not killed: `_end_group`; in a cgroup of its own,
        # exactly its processes are: `kernel.system._job_cgroup`.)
        self._end_left_over(entry)
        entry.lease.close()
        entry.ended_at = time.time()
        entry.error = last_error(entry.log_path, entry.log_start) if entry.code else None
        # (a peer of a fenced process, `lost process 1`, ends a moment before its own fence)
        entry.cut_off = entry.fenced or self.session is None \
            or time.monotonic() - self._answered > 2 * self._interval
        if entry.fenced:  # (its log says nothing: SIGKILLed; it was `was killed (exit -9)`)
            entry.error = (f"fenced: executor {self.executor_id} had no answer from the coordinator for "
                           f"over {self._fence_after:g} s and stopped it")
        if entry.error and entry.pipeline is not None:
            # (the job's message names the file as it was submitted: it named this
            # executor's copy, `/var/lib/kernel-exec/pipelines/<sha256>/pipeline.py
            # has no 'nightly'`, where `kernel run` and `submit` say `pipeline.py`)
            entry.error = entry.error.replace(str(entry.pipeline), entry.pipeline.name)
        log.info("executor: %s attempt %d process %d exited %d", entry.job, entry.attempt,
                 entry.process, entry.code)
        self._forget_old()
        if self.session is not None:
            await self._report_exit(self.session, entry)
        else:  # (the next register lists it, or `_report_exits_after` the one in flight)
            self._note_unreported(entry)

    async def _report_exit(self, session: Session, entry: JobProcess, **told) -> None:
        try:
            await session.request("exited", **entry.report(), **told)
        except (ConnectionLost, RequestError, TimeoutError):
            self._note_unreported(entry)  # the next register lists it
            return
        noted = self._noted_exits()  # (noted while a register was in flight: `_report_exits_after`)
        if any(_key(e) == _key(entry.report()) for e in noted):
            self._remember({**self._record, "ended": [e for e in noted if _key(e) != _key(entry.report())]},
                           f"the exit of {_named(entry.report())}, now heard by the coordinator, stays noted "
                           "there (listed again at a register: news to no one)")

    def _note_unreported(self, entry: JobProcess) -> None:
        """A job process's exit the coordinator has not heard (this executor
        cut off from it) is noted in executor.json (`ended`), and the next
        register lists it, that of the next executor on this workdir too: the
        exit was kept in memory only, and an executor stopped (SIGTERM) before
        it could tell left the coordinator to find the process gone, `executor
        e1 no longer runs process 0 (it restarted)`, a restart spent: a job
        whose user function had raised ran again, and one that had completed
        ran again from its start. (Not those it stopped on purpose: its note
        of the stop says them, `_note_stopped`.)"""
        key = _key(entry.report())
        if key in self._stopped_here:
            return
        noted = [e for e in self._noted_exits() if _key(e) != key] + [entry.report()]
        self._remember({**self._record, "ended": noted[-_KEEP_ENDED:]},
                       f"the exit of {_named(entry.report())} (code {entry.code}), which the coordinator has "
                       "not heard, is kept in memory only: an executor started again on this workdir cannot "
                       "report it")

    def _noted_exits(self) -> list[dict]:
        """executor.json's `ended` (`_note_unreported`), each as a register
        lists an exit; anything else in it (the file edited, or garbage),
        left out."""
        said = self._record.get("ended")
        return [{**{name: e.get(name) for name in _EXIT_FIELDS}, "cut_off": e.get("cut_off") is True}
                for e in said if _exit_noted(e)] if isinstance(said, list) else []

    def _report_exits_after(self, listed: list[dict]) -> None:
        """The processes a register listed running that ended before its
        reply came: their `_follow` found no session and left them to a
        register, the one in flight, whose list was made before. Unreported,
        the coordinator waited for their exit for as long as the connection
        lasted (a job completed while its coordinator restarted stayed
        'running')."""
        running = {(p["job"], p["attempt"], p["process"]) for p in listed if p.get("code") is None}
        for key in running:
            entry = self.processes.get(key)
            if entry is not None and entry.code is not None:
                task = asyncio.ensure_future(self._report_exit(self.session, entry))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _forget_old(self) -> None:
        ended = sorted((p for p in self.processes.values() if p.code is not None), key=lambda p: p.ended_at)
        for entry in ended[: max(0, len(ended) - _KEEP_ENDED)]:
            del self.processes[(entry.job, entry.attempt, entry.process)]

    async def _stop(self, job: str, attempt: int | None, catalog: str | None = None) -> None:
        """Stop the job's processes (of `attempt`; all: None); of `catalog`
        only, where the stop names one (and the process one: an executor's
        catalog not yet known named none), another catalog's job of the same
        id and attempt listed by the coordinator: its job ids are not ours."""
        targets = [p for p in self.processes.values() if p.job == job and p.code is None
                   and (attempt is None or p.attempt == attempt)
                   and (catalog is None or p.catalog is None or p.catalog == catalog)]
        await asyncio.gather(*(self._stop_one(p) for p in targets))

    async def _stop_one(self, entry: JobProcess) -> None:
        for sig, wait in ((signal.SIGINT, STOP_GRACE), (signal.SIGKILL, None)):
            # (not one that has ended, its exit not yet seen: reaped by asyncio's watcher
            # thread, its pid may be a newcomer's, which leads a group of its own, and it
            # was sent SIGINT; its group is ended after it, `_end_group`)
            if not _has_ended(entry):
                try:
                    os.killpg(entry.proc.pid, sig)
                except ProcessLookupError:
                    pass
            try:
                await asyncio.wait_for(entry.proc.wait(), wait)
                break
            except TimeoutError:
                continue
        # the process group: a kernel or relay that outlived its launcher
        self._end_left_over(entry)

    def _end_left_over(self, entry: JobProcess) -> None:
        """End what the job process, ended, left running: its cgroup's
        processes, exactly, where it has one; else its process group's."""
        if entry.cgroup is not None:
            self._cgroups.end(entry.cgroup)
        else:
            _end_group(entry.proc.pid)

    def _log(self, job: str, offset: int, raw: bool = False) -> dict:
        """The job's log from `offset`, a piece of it (`log_piece`); `raw`:
        its bytes as they are, as latin-1 text (which gives each byte back,
        as `file_fields` does), for the coordinator's copy of the log as
        this executor leaves (`LeftLogs.fetch`): the pieces it serves from
        it start at this file's offsets, which a copy of the UTF-8 text,
        bytes that are not UTF-8 replaced, would not keep."""
        path = self.workdir / "logs" / f"{job}.log"
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read(LOG_CHUNK)
        except FileNotFoundError:
            data = b""
        if raw:
            return {"text": data.decode("latin-1"), "encoding": "latin-1", "offset": offset + len(data)}
        return log_piece(data, offset)

    async def close(self) -> None:
        for port in list(self._prepared):
            self._forget_prepared(port)
        # (the starts in flight first, each in its turn: their processes are listed
        # here. One that waited its turn was started after the list was made, and ran
        # on, never stopped, beside its job moved elsewhere, for as long as an app
        # that closed this executor ran. Later ones are refused, as during a leave.)
        self._closed = True
        async with self._spawning:  # (its waiters go first: none after it, refused)
            pass
        unseen = [p for p in self.processes.values() if p.code is None]
        # One that has ended, its exit not yet seen by `_follow` (on its way through
        # the loop), is not stopped here: counted so, a process that had failed on its
        # own was moved free by the next register, its error lost; and its `_follow`,
        # left to a loop about to end, noted nothing. Its exit is noted as it is.
        ended = [p for p in unseen if _has_ended(p)]
        running = [p for p in unseen if p not in ended]
        self._stopped_here.update((p.job, p.attempt, p.process) for p in running)
        # (shielded: a close() cancelled, a second SIGTERM's doing, cancelled `_follow`
        # too, and the close() after it, the CLI's, raised CancelledError at once: the
        # exit noted nowhere, nor the stops, `_note_stopped`)
        await asyncio.gather(*(self._stop_one(p) for p in running),
                             *(asyncio.shield(p.followed) for p in ended if p.followed is not None))
        await self._cgroups.close()  # (their cgroups removed, once the processes killed have gone)
        if not self._leaving:  # (connected, `_leave` said it)
            self._note_stopped()
        if not self._saying_left:
            # (the workdir's lock goes with the executor: kept open, an app that ran one
            # and closed it held a descriptor for as long as it ran, and the workdir
            # stayed locked to the next executor; a leave lets it go once it has said
            # "left", not before: a next executor on the workdir could come first)
            self._workdir_lock.close()

    def _note_stopped(self) -> None:
        """This executor stops on purpose (Ctrl-C, SIGTERM) and the
        coordinator has not heard it leave: stopped while it could not reach
        the coordinator (restarting, or a connection broken), its job
        processes ended with no word to it. Kept in executor.json (`stopped`:
        [job, attempt, process] of each it stopped, with those of a note not
        said yet), the next executor on this workdir says so when it
        registers, and those jobs move without spending a restart, as when
        the coordinator hears the stop: each was counted as a failure,
        `executor e1 no longer runs process 0 (it restarted)`, and a job at
        --max-restarts 0 failed. Only those it stopped: "every job of this
        executor" excused a SIGKILL before (the executor started again and
        stopped while the coordinator was still down, having stopped nothing),
        and a process that had failed on its own."""
        said = self._record.get("stopped")
        stopped = {tuple(s) for s in said if isinstance(s, list) and len(s) == 3} \
            if isinstance(said, list) else set()
        stopped |= self._stopped_here
        if self.executor_id is not None and stopped:  # (never registered: no job ran here)
            self._remember({**self._record, "stopped": sorted(list(s) for s in stopped)},
                           f"that it stopped {', '.join(_named(_key_fields(s)) for s in sorted(stopped))} on "
                           "purpose is not kept: an executor started again on this workdir cannot say so, "
                           "and their jobs may spend a restart")


def _end_group(pgid: int) -> None:
    """SIGKILL what is left of a job process's group (its session: `start_new_session`),
    the process reaped, where it has no cgroup of its own (`JobProcess.cgroup`). Its pid
    is given to no other process while the group has members; a process that holds it
    now is a newcomer's, and the group it named is empty: a newcomer leading a group of
    its own (a `setsid` daemon, another job process) was killed, a process of no job's.
    Left: the group's last member ending between the check and the signal, its pid
    given meanwhile to such a newcomer (a pid's reuse within microseconds), and a
    process of the job's that left the group; a cgroup closes both."""
    if os.path.exists(f"/proc/{pgid}"):
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _has_ended(entry: JobProcess) -> bool:
    """Whether the job process has exited, though asyncio may not have said
    so yet: a zombie, or reaped already by asyncio's child watcher (its
    thread). On its pidfd: by its pid, a process given that pid since (this
    executor's next job process) was taken for it, running."""
    if entry.proc.returncode is not None or entry.gone:
        return True
    try:
        if entry.pidfd is not None:
            return os.waitid(os.P_PIDFD, entry.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        return os.waitid(os.P_PID, entry.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _pidfd(pid: int) -> tuple[int | None, bool]:
    """A pidfd of the job process `pid`, just started (None where Linux has
    none), and whether it has gone already (its pid free: reaped)."""
    try:
        return os.pidfd_open(pid), False
    except ProcessLookupError:
        return None, True
    except (AttributeError, OSError):
        return None, False


_EXIT_FIELDS = ("job", "attempt", "process", "code", "error", "dashboard", "catalog")


def _key(process: dict) -> tuple[str, int, int]:
    """A listed process's (job, attempt, process)."""
    return process["job"], process["attempt"], process["process"]


def _key_fields(key) -> dict:
    """A (job, attempt, process) as a listed process's fields."""
    return dict(zip(("job", "attempt", "process"), key))


def _named(process: dict) -> str:
    """`job-1 attempt 1 process 0`, for a listed process."""
    return f"{process['job']} attempt {process['attempt']} process {process['process']}"


def _exit_noted(e) -> bool:
    """Whether `e` is a noted exit, as `JobProcess.report` makes it."""
    def integer(n) -> bool:
        return isinstance(n, int) and not isinstance(n, bool)

    return isinstance(e, dict) and isinstance(e.get("job"), str) and integer(e.get("attempt")) \
        and integer(e.get("process")) and integer(e.get("code")) \
        and all(e.get(name) is None or isinstance(e[name], str) for name in ("error", "dashboard", "catalog"))


async def _resolved_off_the_loop(host: str) -> list | None:
    """What `localhost` resolves to here, for `_listening_sockets`, resolved
    in a thread (`loop.getaddrinfo`): resolved on the event loop, a slow
    resolver held the executor's every request and heartbeat meanwhile.
    None for any other host (nothing to resolve); none found where it fails."""
    from kernel.net._relay import _listen_host

    where = _listen_host(host)
    if where is None or where.lower().rstrip(".") != "localhost":
        return None
    try:
        return await asyncio.get_running_loop().getaddrinfo(
            where, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return []


def _listening_sockets(host: str, found: list | None = None) -> list[socket.socket]:
    """The sockets listening on one port the system picks, for a job
    process's links: on every address `localhost` resolves to here (it
    resolves on the peers' machine alike), as the process bound them itself
    (`create_server('localhost', port)`: 127.0.0.1 and ::1 where both are
    listed); one socket for any other host (`_listening_socket`). Prepared
    on 127.0.0.1 alone, a peer that dialled localhost by ::1 was refused.
    `found`: what localhost resolved to, resolved already off the event
    loop (`_resolved_off_the_loop`); resolved here where it is not given."""
    from kernel.net._relay import _listen_host

    where = _listen_host(host)
    if where is None or where.lower().rstrip(".") != "localhost":  # (every interface, or an IP address)
        return [_listening_socket(host)]
    if found is None:
        try:
            found = socket.getaddrinfo(where, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except OSError:
            return [_listening_socket(host)]
    if not found:
        return [_listening_socket(host)]
    addresses = list(dict.fromkeys((family, address[0]) for family, _, _, _, address in found
                                   if family in (socket.AF_INET, socket.AF_INET6)))
    for _ in range(_PORT_TRIES):  # (the port picked on the first address may be taken on another)
        socks = _bound_on_one_port(addresses)
        if socks:
            return socks
    return [_listening_socket(host)]


# tries at one port free on every address of localhost before one address only
_PORT_TRIES = 8


def _bound_on_one_port(addresses: list[tuple[int, str]]) -> list[socket.socket]:
    """Sockets listening on each of `addresses` (family, address) that this
    machine has, on one port picked by the first; none where that port is
    taken on another (the caller picks again)."""
    socks: list[socket.socket] = []
    try:
        for family, address in addresses:
            try:
                sock = socket.socket(family)
            except OSError:  # (no IPv6 at all, ::1 listed all the same: a kernel booted with ipv6.disable=1)
                continue
            try:
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # (as create_server)
                sock.bind((address, socks[0].getsockname()[1] if socks else 0))
                sock.listen(128)
            except OSError as exc:
                sock.close()
                if socks and exc.errno == errno.EADDRINUSE:
                    for held in socks:
                        held.close()
                    return []
                continue  # (not an address of this machine's: ::1 without IPv6)
            socks.append(sock)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _listening_socket(host: str) -> socket.socket:
    """A socket listening on a port the system picks, for a job process's
    links: on `host` where it is an IP address (or localhost), as the
    process would listen (`kernel.net._relay._listen_host`), else on every
    interface. Not inherited by anything but the process it is handed to."""
    from kernel.net._relay import _listen_host

    where = _listen_host(host)
    if where is None:
        return _listening_everywhere()
    if where.lower().rstrip(".") == "localhost":
        # (its IPv4 address, as the name resolved to in `bind`: resolved there, on the
        # event loop, where `_resolved_off_the_loop` found nothing or no port was free on
        # all it found, a slow resolver held the executor's every request meanwhile)
        where = "127.0.0.1"
    sock = socket.socket(socket.AF_INET6 if ":" in where else socket.AF_INET)
    try:
        sock.bind((where, 0))
        sock.listen(128)
    except OSError:  # (not an address of this machine's: every interface, as before)
        sock.close()
        return _listening_everywhere()
    except BaseException:
        sock.close()
        raise
    return sock


def _listening_everywhere() -> socket.socket:
    """A socket listening on every interface, IPv6's and IPv4's (dual-stack,
    IPv4's peers as ::ffff:a.b.c.d), or IPv4's where this machine has no
    IPv6. The process bound its port itself with `create_server(None, port)`,
    on 0.0.0.0 and ::; IPv4's alone, a peer that reaches this host's name
    by IPv6 was refused."""
    try:
        sock = socket.socket(socket.AF_INET6)
    except OSError:
        sock = None
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", 0))
            sock.listen(128)
            return sock
        except OSError:  # (IPv6 there, but no address to bind)
            sock.close()
        except BaseException:
            sock.close()
            raise
    sock = socket.socket(socket.AF_INET)
    try:
        sock.bind(("", 0))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _holds(path: Path, digest: str) -> bool:
    """Whether `path` holds the pipeline of that hash (pipelines are small)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:  # (none there; or in the way of it, a start that fails as before)
        return False
