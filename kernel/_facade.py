"""The public face of running: `run` (blocking) and `run_async` (the
caller's loop), and `plan_for`, which turns their options (and the command
line's) into one checked `RunPlan` that `kernel.execution` carries out.

This module and the fluent API are where the kernel reaches into the layers
above it: here, `kernel.state` for the snapshot store (`Snapshots`), kept out
of the execution layer, which gets it duck-typed inside the plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import multiprocessing
import operator
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from kernel.execution._caller_objects import refuse_caller_objects
from kernel.execution._execute import execute, execute_async, on_a_thread
from kernel.execution._inherited_descriptors import follow_to_their_end, read_write_files_at_their_end
from kernel.execution._plan import PROCESS, THREAD, KernelOptions, RunPlan
from kernel.execution._run_options import (  # noqa: F401  (MAX_CORES: the facade's name for it too)
    DEFAULT_EPOCH_INTERVAL,
    DEFAULT_GC_THRESHOLD,
    DEFAULT_HEARTBEAT,
    DEFAULT_STARTUP_TIMEOUT,
    MAX_CORES,
    check_core_count,
    check_epoch_interval,
    check_heartbeat,
    check_seconds,
)
from kernel.execution._written_files import flush_before_fork
from kernel.net._environment import heartbeat_from_environment
from kernel.scheduling._clock import check_clock
from kernel.scheduling._scheduler import check_settings

if TYPE_CHECKING:  # typed for a user's checker (run(stream) is an error); imported lazily at run time
    from kernel.dataflow._api import Dataflow

log = logging.getLogger("kernel")

__all__ = ["DEFAULT_EPOCH_INTERVAL", "DEFAULT_GC_THRESHOLD", "DEFAULT_HEARTBEAT", "DEFAULT_STARTUP_TIMEOUT",
           "RunPlan", "execute", "flow_fingerprint", "plan_for", "run", "run_async"]


def plan_for(get_flow, *, cores: int = 1, gc_threshold: int | None = DEFAULT_GC_THRESHOLD,
             clock=None, budget: float = 0.001, shares: dict[str, float] | None = None,
             stall_threshold: float = 0.025, state_dir=None,
             epoch_interval: float = DEFAULT_EPOCH_INTERVAL, process_id: int | None = None,
             peers=None, secret=None, secret_file=None, tls=None,
             startup_timeout: float = DEFAULT_STARTUP_TIMEOUT, heartbeat: float | None = None,
             dashboard: str | None = None, progress=None, listen_fd: int | None = None,
             peers_held: bool = False) -> RunPlan:
    """The checked plan of a run of the flow `get_flow()` returns (called
    only when the plan needs the flow: its fingerprint, for a state_dir or a
    cluster). Bad options raise ValueError; a state_dir that cannot be used,
    StateError. `progress(snapshots, final)` is told the kernels' metrics
    while the run runs (the command line's live line). `listen_fd`: a
    socket inherited, listening on this process's own port of `peers`
    (a job process's, from its executor); `peers_held`: its executor says
    every peer's port is held so (`ClusterPlan.peers_held`)."""
    check_cores(cores)
    if cores > 1 or peers is not None:
        _refuse_in_a_daemonic_process(cores)
    check_gc_threshold(gc_threshold)
    check_clock(clock)
    if heartbeat is None:  # read now, not at import: os.environ may have been set since
        heartbeat = heartbeat_from_environment()
    # (used by a cluster only, but refused at once anywhere)
    check_heartbeat(heartbeat)
    check_seconds("startup_timeout", startup_timeout)
    if not isinstance(secret, (str, bytes, bytearray, type(None))):  # (its value is not shown)
        raise ValueError(f"secret must be a str or bytes, not {type(secret).__name__}")
    if peers is None and tls is not None:
        from kernel.execution._cluster import _tls_files

        _tls_files(tls)  # (checked by cluster_plan with peers)
    # Here, not in each kernel: with several cores a kernel process's
    # ValueError would come back wrapped in a KernelProcessError.
    check_settings(budget, shares, stall_threshold, clock)
    # Refused without a state_dir too, as the heartbeat is: a bad value
    # (NaN, -5, 'x') was ignored until the day a state_dir was added.
    check_epoch_interval(epoch_interval)
    if state_dir is not None and not isinstance(state_dir, (str, os.PathLike)):
        # else os.fspath's "expected str, bytes or os.PathLike object, not int", naming nothing
        raise ValueError(f"state_dir must be a directory's path (a str or a Path), got {state_dir!r}")
    if state_dir is not None and os.fspath(state_dir) in ("", b""):
        # else "state_dir '': the directory is read-only", of a directory that was never named
        raise ValueError("state_dir is an empty path: name a directory (\".\" for this one)")
    _name_the_run()
    address = None
    if dashboard is not None:
        from kernel.metrics import parse_address

        address = parse_address(dashboard)
    cluster = None
    if peers is not None:
        from kernel.execution._cluster import cluster_plan

        cluster = cluster_plan(0 if process_id is None else process_id, peers, cores, secret=secret,
                               secret_file=secret_file, tls=tls, startup_timeout=startup_timeout,
                               heartbeat=heartbeat, fingerprint=flow_fingerprint(get_flow()),
                               snapshots=state_dir is not None, listen_fd=listen_fd, peers_held=peers_held)
    elif process_id is not None:
        raise ValueError("process_id needs peers (every process's host:port)")
    snapshots = None
    if state_dir is not None and cluster is not None:
        snapshots = ClusterSnapshots(get_flow(), state_dir, epoch_interval, cluster)
    elif state_dir is not None:
        snapshots = Snapshots(get_flow(), state_dir, epoch_interval, cores)
    return RunPlan(cores=cores, kernel=KernelOptions(clock, budget, shares, stall_threshold),
                   gc_threshold=gc_threshold, snapshots=snapshots, cluster=cluster, dashboard=address,
                   progress=progress)


def _refuse_in_a_daemonic_process(cores: int) -> None:
    """A run on kernel processes cannot start from a daemonic process: a
    kernel process of a run on several kernels is one (a step of it calling
    `run(flow, cores=2)` on a thread), and multiprocessing refuses such a
    process children, with a bare AssertionError ("daemonic processes are
    not allowed to have children") raised as the first kernel started,
    naming neither the run nor what to do."""
    if not multiprocessing.current_process().daemon:
        return
    raise RuntimeError(
        f"a run on {cores} kernel processes (cores={cores}, or peers=) cannot start here: this process is "
        "daemonic (a kernel process of a run on several kernels, or one multiprocessing started "
        "with daemon=True), and a daemonic process may not have children. Run the nested flow on "
        "one kernel (cores=1: in this kernel process, on a thread of its own, as run() blocks), or "
        "from the process that started the outer run"
    )


def check_cores(cores: int) -> None:
    check_core_count(cores)
    _warn_if_oversubscribed(cores)


# gc.set_threshold takes a C int; a negative threshold collected at every allocation.
_GC_THRESHOLD_MAX = 2**31 - 1


def check_gc_threshold(threshold) -> None:
    """None (GC settings left alone), or a generation-0 threshold: 0 turns
    automatic collection off, as `gc.set_threshold(0)` does."""
    if threshold is None:
        return
    try:  # what gc.set_threshold takes: an int, or another integer (numpy.int64) by __index__
        whole = None if isinstance(threshold, bool) else operator.index(threshold)
    except TypeError:
        whole = None
    if whole is None or not 0 <= whole <= _GC_THRESHOLD_MAX:
        raise ValueError("gc_threshold_during_run must be None (leave the GC alone) or an int from 0 "
                         f"(no automatic collection) to {_GC_THRESHOLD_MAX}, got {threshold!r}")


def _warn_if_oversubscribed(cores: int) -> None:
    """More kernels than CPUs this process may use works (kernels share
    CPUs, an idle one sleeps) but is slower than fewer kernels, so it is
    said, not refused: tests run several kernels on small machines, and a
    cluster's processes must agree on `cores` even where CPUs differ. The
    CPUs are the fewest of its affinity's, its cgroup's CPU quota's
    (rounded up: 1.5 CPUs' time runs two kernels) and, in a Slurm job, the
    job's on this node (`slurm_cpus`: Slurm without task/affinity or
    task/cgroup leaves the affinity every CPU), and the warning says which
    it is (on a tie, the first of them)."""
    if cores == 1:
        return
    from kernel.execution._cores import cgroup_cpu_quota, slurm_cpus

    def plural(n) -> str:
        return "" if n == 1 else "s"

    cpus = len(os.sched_getaffinity(0))
    bounds = [(cpus, f"this process may use only {cpus} CPU{plural(cpus)} (os.sched_getaffinity)")]
    quota = cgroup_cpu_quota()
    if quota is not None:
        share = "CPU's time" if quota == 1 else "CPUs' time"
        bounds.append((max(1, math.ceil(quota)),
                       f"this process's CPU quota (its cgroup's) gives it only {quota:g} {share}"))
    slurm = slurm_cpus()
    if slurm is not None:
        given, variable = slurm
        bounds.append((given, f"this process's Slurm job gives it only {given} CPU{plural(given)} "
                              f"on this node ({variable})"))
    bound, said = min(bounds, key=lambda pair: pair[0])
    if cores > bound:
        log.warning("cores=%d, but %s: the kernels will share CPUs, and run slower than with cores=%d",
                    cores, said, bound)


class Snapshots:
    """What a run with a `state_dir` starts from (opened in the caller)."""

    def __init__(self, flow, state_dir, epoch_interval: float, cores: int) -> None:
        # The one place the kernel reaches into `state`, kept to the facade
        # (as `_dataflow.py` reaches into `operators`).
        from kernel.operators import SNAPSHOT_LAYOUT
        from kernel.runtime._rescale import resume_record
        from kernel.state import SnapshotStore
        from kernel.state._generations import Generation, generations, look
        from kernel.state._store import recorded_before

        if not (isinstance(epoch_interval, (int, float)) and 0 < epoch_interval < float("inf")):
            raise ValueError(f"epoch_interval must be a positive number of seconds, got {epoch_interval!r}")
        self.state_dir = state_dir
        self.interval = float(epoch_interval)
        from kernel.state._store import Fingerprint

        fingerprint = Fingerprint(flow_fingerprint(flow), flow.graph.fingerprint_steps())
        # The newest complete epoch of every generation of store files here
        # (state/_generations.py) that reads back intact: a one-process run
        # goes on writing a one-process generation, and starts one after a
        # cluster's.
        source, self.blobs = self._intact_epoch(state_dir, fingerprint, SNAPSHOT_LAYOUT)
        after_cluster = source is not None and source[0].cluster
        generation = Generation(source[1][0], False) if after_cluster else (source[0] if source else
                                                                            Generation(0, False))
        self.name = generation.file_name()
        self.store = SnapshotStore(state_dir, self.name)
        self.store.claim(fingerprint, cores, SNAPSHOT_LAYOUT, key_groups=source[2] if after_cluster else None)
        self.epoch, self.finished = (source[1][0], source[1][1]) if source else (0, False)
        self.store.discard_after(self.epoch)  # (rows past it: of a line no run continues)
        if after_cluster:
            recorded = recorded_before(look(state_dir, generations(state_dir)[source[0]]).meta, self.epoch)
        else:
            recorded = self.store.recorded_run(self.epoch)
        if self.blobs is not None:
            self._check_resume(flow, cores, recorded)
        self.store.record_run(self.epoch, resume_record(flow.graph))
        self._tell()

    @staticmethod
    def _intact_epoch(state_dir, fingerprint: str, layout: str):
        """(the generation, its (epoch, final, kernels), key groups) of the
        newest complete epoch whose every kernel's snapshot reads back
        intact, and those snapshots; (None, None): afresh. A corrupt one is
        skipped with a warning, through every generation (a one-process run
        after a cluster, whose own newest epoch failed its checksum, started
        afresh beside the cluster's intact epoch, and a later run resumed that
        again, mixing two lines of epochs), and the epochs skipped are
        discarded everywhere (`abandon_after`)."""
        from kernel.state import CorruptSnapshot, SnapshotStore
        from kernel.state._generations import abandon_after, complete_epochs, read_old_epoch

        found = complete_epochs(state_dir, fingerprint, layout)
        chosen, blobs = None, None
        for source in found:
            generation, (epoch, _, kernels), _ = source
            try:
                if generation.cluster:  # (a process's files missing: refused, never fallen back past)
                    blobs = read_old_epoch(state_dir, generation, epoch, kernels,
                                           "a run resumes a cluster's state on one process only where the "
                                           "state_dir holds every process's files (a directory they "
                                           "shared, or their files copied into it)")
                else:  # (a snapshot missing from a complete epoch is a damaged one: fallen back past)
                    store = SnapshotStore(state_dir, generation.file_name())
                    try:
                        blobs = store.epoch_snapshots(epoch, kernels, as_parts=True)
                    finally:
                        store.close()
            except CorruptSnapshot as exc:
                log.warning("state_dir %s: %s; falling back to the previous complete epoch", state_dir, exc)
                continue
            chosen = source
            break
        if found and chosen is None:
            log.warning("state_dir %s: no complete epoch reads back intact; starting afresh", state_dir)
        if found and chosen is not found[0]:
            abandon_after(state_dir, 0 if chosen is None else chosen[1][0])
        return chosen, blobs

    def _check_resume(self, flow, cores: int, recorded: dict | None) -> None:
        """Refuse a resume that would leave work undone (`resume_checks`);
        restore every kernel from all the old kernels' snapshots where this
        run has another number of kernels, or a step needs it."""
        from kernel.runtime._rescale import resume_checks
        from kernel.state import StateError

        refusal, cut = resume_checks(flow.graph, self.blobs, recorded)
        if refusal is not None:
            raise StateError(f"state_dir {os.fspath(self.state_dir)!r}: resuming epoch {self.epoch}: "
                             f"{refusal}")
        if len(self.blobs) != cores:
            self.blobs = self._rescaled(flow, cores)
        elif cut is not None and not self.finished:
            self._cut(flow, cut)

    def _rescaled(self, flow, cores: int) -> list:
        """Every kernel of this run starts from all the old kernels'
        snapshots, cut by key group (kernel/runtime/_rescale.py)."""
        from kernel.runtime._rescale import Rescaled
        from kernel.state import StateError

        old = len(self.blobs)
        per_kernel = flow.graph.state_per_kernel()
        if per_kernel is not None:
            what, why = per_kernel
            raise StateError(
                f"state_dir {os.fspath(self.state_dir)!r} was written by {old} "
                f"kernel{'s' if old > 1 else ''} and this run has {cores}: {what} resumes on as many "
                f"kernels as the run that wrote its state ({why})")
        log.warning("state_dir %s: epoch %d was written by %d kernel%s; this run has %d: keyed state, "
                    "timers and source positions move by key group (%d groups)", self.state_dir, self.epoch,
                    old, "s" if old > 1 else "", cores, self.store.key_groups)
        return [Rescaled(self.blobs)] * cores

    def _cut(self, flow, reason: str) -> None:
        """As many kernels as wrote the epoch, but a step needs every
        kernel to restore from all their snapshots (`resume_checks`: a
        Redis stream added where the source had ended): cut them as for
        another number of kernels."""
        from kernel.runtime._rescale import Rescaled
        from kernel.state import StateError

        per_kernel = flow.graph.state_per_kernel()
        if per_kernel is not None:
            what, why = per_kernel
            raise StateError(
                f"state_dir {os.fspath(self.state_dir)!r}: {reason}, and {what} restores each kernel "
                f"from its own snapshot only ({why}), where that step stays ended: add the streams with a "
                "fresh state_dir")
        log.warning("state_dir %s: %s: every kernel restores epoch %d from all the kernels' snapshots, "
                    "cut by key group (%d groups) as on another number of kernels", self.state_dir, reason,
                    self.epoch, self.store.key_groups)
        self.blobs = [Rescaled(self.blobs)] * len(self.blobs)

    def _tell(self) -> None:
        """Say what this run starts from when it is not a fresh start. A
        finished flow still runs, restored as ended: that publishes the
        files a crash during its final commit left hidden."""
        if self.finished:
            log.warning("state_dir %s: this flow already ran to the end (epoch %d); nothing to do "
                        "but publish any of its files left hidden", self.state_dir, self.epoch)
        elif self.epoch:
            log.warning("state_dir %s: resuming from epoch %d", self.state_dir, self.epoch)

    def open_store(self):
        from kernel.state import SnapshotStore

        return SnapshotStore(self.state_dir, self.name)

    def close(self) -> None:
        """The run is over: its store's connection closed now, not when the
        collector finds it (a connection closed later checkpoints its WAL
        into the file then: a state_dir moved aside or cut meanwhile was
        written to after the run had returned)."""
        self.store.close()

    def local(self):
        from kernel.runtime._coordinate import LocalCoordinator

        return LocalCoordinator(self.store, self.interval, self.blobs and self.blobs[0], self.epoch,
                                self.finished)

    def for_processes(self) -> tuple:
        return (self.open_store, self.interval, self.blobs, self.epoch, self.store, self.finished)


class ClusterSnapshots:
    """What one process of a cluster with a `state_dir` starts from.

    Each process keeps its own store file, `snapshots-process{P}.sqlite`,
    so the state_dir may be a local directory at the same path on every
    machine or one directory they all share (SQLite's locking is not to be
    trusted on a network file system; separate files need none). Which epoch
    the run resumes from is agreed once the processes have linked up: each
    offers what its state_dir holds (`offer`: every generation of store
    files, `kernel.state._generations`), process 0 decides (`decide`), and
    each claims its file of the generation the run writes (`prepare`). A
    cluster of another shape than the one that wrote the epoch (other
    processes, other cores each, or one process before) starts a new
    generation and reads every old kernel's snapshot: only where each
    process sees them all, in a state_dir they share."""

    def __init__(self, flow, state_dir, epoch_interval: float, cluster) -> None:
        from kernel.operators import SNAPSHOT_LAYOUT
        from kernel.runtime._rescale import checked_steps, resume_record
        from kernel.state import StateError
        from kernel.state._generations import failing, generations, look, newest, steps_parts

        if not (isinstance(epoch_interval, (int, float)) and 0 < epoch_interval < float("inf")):
            raise ValueError(f"epoch_interval must be a positive number of seconds, got {epoch_interval!r}")
        self.state_dir = os.fspath(state_dir)
        self.interval = float(epoch_interval)
        self.process = cluster.process
        self.cluster = cluster
        from kernel.state._store import Fingerprint

        self.fingerprint = Fingerprint(flow_fingerprint(flow), flow.graph.fingerprint_steps())
        self.layout = SNAPSHOT_LAYOUT
        self.placement = (f"process {cluster.process} of {cluster.processes}, {cluster.cores} "
                          f"core{'s' if cluster.cores > 1 else ''} each")
        offer = {"process": cluster.process, "state_dir": self.state_dir, "error": None,
                 "shape": (cluster.processes, cluster.cores), "per_kernel": flow.graph.state_per_kernel(),
                 "generations": {}}
        self.graph = flow.graph
        self.record = resume_record(flow.graph)
        checked = checked_steps(flow.graph)
        try:  # refused on process 0, for every process, naming this one
            newest(self.state_dir, self.fingerprint, SNAPSHOT_LAYOUT)  # this flow's, intact
            for generation, files in generations(self.state_dir).items():
                seen = look(self.state_dir, files)
                offer["generations"][generation] = {
                    "complete": seen.complete, "rows": seen.rows, "shape": _shape(seen.meta),
                    "key_groups": int(seen.meta["key_groups"]) if seen.meta else None,
                    # for process 0's `resume_checks` of the epoch it decides on
                    "runs": {key: value for key, value in seen.meta.items() if key.startswith("run@")},
                    # (snapshots failing their checksum: process 0 falls back past their epoch)
                    "failing": failing(self.state_dir, files, [e for e, _, _ in seen.complete]),
                    "parts": steps_parts(self.state_dir, files, checked) if checked else {}}
        except StateError as exc:
            offer["error"] = str(exc)
        self._offer = offer

    def close(self) -> None:
        """(This process's store is opened and closed by the launcher's
        epochs, `ClusterLauncherSide`.)"""

    def open_store(self, generation: int = 0):
        """This process's store file of the generation this cluster writes,
        which started at epoch `generation` (0: a fresh start)."""
        from kernel.state import SnapshotStore
        from kernel.state._generations import Generation

        shape = None if generation == 0 else (self.cluster.processes, self.cluster.cores)
        return SnapshotStore(self.state_dir, Generation(generation, True, shape).file_name(self.process))

    def prepare(self, plan) -> None:
        """In the relay, once agreed: claim this process's store file of the
        generation the run writes, before any kernel opens it, and record
        what this run says of its steps there."""
        from kernel.state._generations import abandon_after

        written, source, epoch = plan
        # (epochs past the one resumed, skipped for a snapshot failing its
        # checksum, are a line no run continues: in this process's files)
        abandon_after(self.state_dir, epoch, self.process)
        store = self.open_store(written)
        try:
            store.claim(self.fingerprint, self.cluster.kernels, self.layout, self.placement,
                        key_groups=None if source is None else source[2], afresh=epoch == 0)
            store.discard_after(epoch)
            store.record_run(epoch, self.record)
        finally:
            store.close()
        if source is not None and source[3] is not None:
            log.warning("state_dir %s: %s: every kernel restores epoch %d from all the kernels' snapshots, "
                        "cut by key group as on another number of kernels", self.state_dir, source[3], epoch)

    def snapshot_for(self, store, index: int, epoch: int, plan):
        """In kernel `index`: its snapshot of the restored `epoch`, from its
        own store (the same generation), or cut from every old kernel's."""
        if plan[1] is None:
            return store.snapshot_for(epoch, index, as_parts=True)
        from kernel.runtime._rescale import Rescaled
        from kernel.state._generations import Generation, read_old_epoch

        source, kernels, _, cut = plan[1]
        blobs = read_old_epoch(self.state_dir, Generation(*source), epoch, kernels,
                               "a cluster resumes on another shape only from a state_dir its processes share")
        return blobs[index] if kernels == self.cluster.kernels and cut is None else Rescaled(blobs)

    def for_processes(self) -> tuple:
        # the snapshots and restored epoch come from the agreement (kernel/execution/_child.py)
        return (self.open_store, self.interval, self.snapshot_for, None, self.open_store, None)

    def agreement(self) -> tuple:
        import functools
        import pickle

        decide = functools.partial(ClusterSnapshots.decide, graph=self.graph)
        return pickle.dumps(self._offer, protocol=5), decide, self.prepare

    @staticmethod
    def decide(offers: dict[int, bytes], graph=None) -> bytes:
        """Process 0: the epoch every process resumes from and where its
        snapshots are, `(epoch, finished, (generation written, source,
        epoch))` pickled, or StateError naming the process that cannot. It is the
        newest epoch complete anywhere: process 0 completes an epoch first
        (when it is durable on every process) and tells the others after,
        so theirs may lag; they still hold its snapshots. `source` is None
        when this cluster's shape wrote it, else `((epoch, cluster, shape),
        kernels, key groups)` of the generation every kernel reads it from
        (`kernel.state._generations.Generation`'s fields), and, when a step
        needs every kernel to restore from all the old kernels' snapshots
        (`resume_checks`), its reason (then `source` names this shape's own
        generation too). `graph`: the flow's, for those checks (left out,
        none are made). A step that cannot resume at all is refused here,
        before anything runs."""
        import pickle

        from kernel.state import FINAL, StateError

        offers = {p: pickle.loads(blob) for p, blob in offers.items()}
        for p in sorted(offers):
            if offers[p]["error"] is not None:
                raise StateError(f"process {p}: {offers[p]['error']}")
        # every complete epoch offered, newest first: the newest whose snapshots
        # are all there and intact (a corrupt one is skipped, as on one process)
        candidates: dict = {}
        for p in sorted(offers):
            for generation, seen in offers[p]["generations"].items():
                for complete in seen["complete"]:
                    candidates.setdefault((complete[0], generation), (generation, complete, p, seen))
        best = None
        for key in sorted(candidates, key=lambda key: key[0], reverse=True):
            corrupt = ClusterSnapshots._corrupt(offers, *candidates[key])
            if corrupt is None:
                best = candidates[key]
                break
            log.warning("state_dir %s: %s; falling back to the previous complete epoch",
                        offers[0]["state_dir"], corrupt)
        if best is None:
            if candidates:
                log.warning("state_dir %s: no complete epoch reads back intact; starting afresh",
                            offers[0]["state_dir"])
            return pickle.dumps((0, False, (0, None, 0)), protocol=5)
        generation, (epoch, finished, kernels), newest, about = best
        processes, cores = offers[0]["shape"]
        same = generation.cluster and about["shape"] == (processes, cores)
        for p in sorted(offers):
            seen = offers[p]["generations"].get(generation, {"rows": set()})
            have = {k for e, k, n in seen["rows"] if n == kernels and e in (epoch, FINAL)}
            needed = range(p * cores, (p + 1) * cores) if same else range(kernels)
            if all(k in have for k in needed):
                continue
            if same:
                what = ("holds no snapshots of this flow" if not seen["rows"]
                        else f"lacks the snapshots of epoch {epoch}")
                raise StateError(
                    f"process {p}: state_dir {offers[p]['state_dir']!r} {what}, but process {newest}'s "
                    f"is at epoch {epoch}: it is missing or another one on that machine (each process "
                    "resumes from its own snapshots, in a state_dir at the same path on every machine "
                    "or one they share); restore it, or move every process's state_dir aside to run "
                    "this flow afresh")
            missing = [k for k in needed if k not in have]
            raise StateError(
                f"process {p}: state_dir {offers[p]['state_dir']!r} lacks the snapshots of kernel"
                f"{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of epoch {epoch}, written "
                f"by {_described(about['shape'], kernels)}, and this run is a cluster of {processes} "
                f"process{'es' if processes > 1 else ''} with {cores} core{'s' if cores > 1 else ''} each: a "
                "cluster resumes on another number of processes or cores only from a state_dir that every "
                "process shares (each kernel reads every old kernel's snapshot)")
        cut = None if graph is None else ClusterSnapshots._checked(graph, offers, generation, epoch, kernels,
                                                                   newest)
        if cut is not None and same:
            ClusterSnapshots._can_cut(offers, generation, epoch, kernels, cut)
        elif same:
            return pickle.dumps((epoch, finished, (generation.epoch, None, epoch)), protocol=5)
        if offers[0]["per_kernel"] and kernels != processes * cores:
            what, why = offers[0]["per_kernel"]
            raise StateError(
                f"process 0: state_dir {offers[0]['state_dir']!r} was written by {kernels} kernels and this "
                f"run has {processes * cores}: {what} resumes on as many kernels as the run that wrote its "
                f"state ({why})")
        source = ((generation.epoch, generation.cluster, generation.shape), kernels, about["key_groups"],
                  cut if same else None)
        # (the same shape, cut: the same generation's files go on; another shape starts its own)
        written = generation.epoch if same else epoch
        return pickle.dumps((epoch, finished, (written, source, epoch)), protocol=5)

    @staticmethod
    def _corrupt(offers: dict, generation, complete: tuple, newest: int, about: dict) -> str | None:
        """Why the complete epoch `complete` of `generation` cannot be
        resumed, where one of the snapshots it needs is there but fails its
        checksum on some process, or is gone from a process that has
        complete epochs newer (which then falls back); None otherwise (a
        snapshot missing altogether is `decide`'s own refusal)."""
        from kernel.state import FINAL

        epoch, _, kernels = complete
        processes, cores = offers[0]["shape"]
        same = generation.cluster and about["shape"] == (processes, cores)
        for p in sorted(offers):
            seen = offers[p]["generations"].get(generation, {"rows": set()})
            bad = seen.get("failing", set())
            needed = range(p * cores, (p + 1) * cores) if same else range(kernels)
            for k in needed:
                mine = (epoch, k, kernels) if (epoch, k, kernels) in seen["rows"] else (FINAL, k, kernels)
                if mine not in seen["rows"] and any(e > epoch for e, _, _ in seen.get("complete", ())):
                    # Each process keeps the epoch its own chains fall back
                    # on (`SnapshotStore._fallback`: where its kernels' bases
                    # are): one another process kept, it has let go.
                    return f"process {p} no longer keeps epoch {epoch} (it has retired it)"
                if mine in bad:
                    what = (f"the final snapshot of kernel {k}" if mine[0] == FINAL
                            else f"the snapshot of kernel {k} at epoch {epoch}")
                    return f"process {p}: {what} fails its checksum"
        return None

    @staticmethod
    def _checked(graph, offers: dict, generation, epoch: int, kernels: int, newest: int) -> str | None:
        """`resume_checks` of the epoch decided on, from the parts of the
        checked steps the offers carry (each process's of its own kernels,
        or of every kernel in a state_dir they share); StateError for a step
        that cannot resume; the reason to cut, if any."""
        from kernel.runtime._rescale import checked_steps, resume_checks_of
        from kernel.state import FINAL, StateError
        from kernel.state._store import recorded_before

        if not checked_steps(graph):
            return None
        found: dict = {}
        for p in sorted(offers):
            found.update(offers[p]["generations"].get(generation, {}).get("parts", {}))
        old = [found.get((epoch, k, kernels), found.get((FINAL, k, kernels))) for k in range(kernels)]
        if None in old:  # (a snapshot failing its checksum: its kernel says so when it reads it)
            return None
        runs = offers[newest]["generations"][generation]["runs"] or next(
            (offers[p]["generations"][generation]["runs"] for p in sorted(offers)
             if offers[p]["generations"].get(generation, {}).get("runs")), {})
        refusal, cut = resume_checks_of(graph, old, recorded_before(runs, epoch))
        if refusal is not None:
            raise StateError(f"process 0: state_dir {offers[0]['state_dir']!r}: resuming epoch {epoch}: "
                             f"{refusal}")
        return cut

    @staticmethod
    def _can_cut(offers: dict, generation, epoch: int, kernels: int, cut: str) -> None:
        """A cluster of the shape that wrote `epoch` whose kernels must each
        restore from every old kernel's snapshot (`cut`): only where each
        process sees them all (a state_dir they share), and without loops."""
        from kernel.state import FINAL, StateError

        if offers[0]["per_kernel"]:
            what, why = offers[0]["per_kernel"]
            raise StateError(
                f"process 0: state_dir {offers[0]['state_dir']!r}: {cut}, and {what} restores each kernel "
                f"from its own snapshot only ({why}), where that step stays ended: add the streams with a "
                "fresh state_dir")
        for p in sorted(offers):
            seen = offers[p]["generations"].get(generation, {"rows": set()})
            have = {k for e, k, n in seen["rows"] if n == kernels and e in (epoch, FINAL)}
            missing = [k for k in range(kernels) if k not in have]
            if missing:
                raise StateError(
                    f"process {p}: state_dir {offers[p]['state_dir']!r}: {cut}, so every kernel must restore "
                    f"epoch {epoch} from all the kernels' snapshots, and this one lacks those of kernel"
                    f"{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))}: a cluster does that "
                    "only from a state_dir every process shares; resume with the old stream list, or with "
                    "every process's snapshot files in one state_dir they share")


def _shape(meta: dict) -> tuple[int, int] | None:
    """(processes, cores each) of a cluster's store file, from its placement
    ("process 1 of 2, 2 cores each"); None for one process's."""
    import re

    match = re.match(r"process \d+ of (\d+), (\d+) cores? each$", meta.get("placement", ""))
    return (int(match.group(1)), int(match.group(2))) if match else None


def _described(shape, kernels: int) -> str:
    if shape is None:
        return f"one process of {kernels} kernel{'s' if kernels > 1 else ''}"
    return f"a cluster of {shape[0]} processes with {shape[1]} core{'s' if shape[1] > 1 else ''} each"


def flow_fingerprint(flow) -> str:
    """The flow's fingerprint (`Graph.fingerprint`): what its snapshots depend on."""
    return flow.graph.fingerprint()


async def run_async(flow: Dataflow, *, cores: int = 1, clock=None, budget: float = 0.001,
                    shares: dict[str, float] | None = None, stall_threshold: float = 0.025,
                    state_dir=None, epoch_interval: float = DEFAULT_EPOCH_INTERVAL,
                    process_id: int | None = None, peers=None, secret=None, tls=None,
                    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT, heartbeat: float | None = None,
                    dashboard: str | None = None, coordinator: str | None = None) -> None:
    """Run `flow` on the running event loop, sharing it.

    With `cores=1` the kernel runs on this loop and hands it back at least
    every `budget` seconds, so the host application's tasks and I/O keep
    running. With `cores=N` the kernels run in N pinned processes and this
    coroutine waits for them without blocking the loop. Raises the first
    failure (an `OperatorError` naming the operator, function and record;
    with several cores a `KernelProcessError` naming the kernel, with the
    kernel's error as its cause). Afterwards every `collect()` handle's
    `.items` holds the results. `process_id` and `peers` make this process
    one of a cluster (see `run`); `dashboard` serves metrics (see `run`).
    """
    _refuse_inside_a_pipeline_import("run_async")
    _check_flow(flow, "run_async")
    flow.graph.check_cycles()
    _check_outputs(flow)
    _topics_coordinator(flow, coordinator)
    with _one_run_at_a_time(flow, "run_async"):
        flow._results_delivered([])  # a failed run leaves no earlier run's results in the handles
        # (held before the plan: planning opens the store, and a run refused
        # after it had claimed it for its own kernel count and discarded the
        # live run's newest snapshots)
        with _state_dir_held(state_dir, process_id):
            def make_plan() -> RunPlan:
                return plan_for(lambda: flow, cores=cores, clock=clock, budget=budget, shares=shares,
                                stall_threshold=stall_threshold, state_dir=state_dir,
                                epoch_interval=epoch_interval, process_id=process_id, peers=peers,
                                secret=secret, tls=tls, startup_timeout=startup_timeout,
                                heartbeat=heartbeat, dashboard=dashboard)

            plan = make_plan() if state_dir is None else await _planned_off_the_loop(make_plan)
            appended_to = _before_kernel_processes(flow, plan)
            try:
                flow._results_delivered(await execute_async(plan, lambda: flow))
            finally:
                follow_to_their_end(appended_to)


async def _planned_off_the_loop(make_plan) -> RunPlan:
    """`make_plan()` of a run with a state_dir under `run_async`, on a
    thread: the store's set-up (created, read, checked and claimed: SQLite
    and fsync) held the host's loop 0.04-0.3 s, the embedding application's
    timers and I/O stalled meanwhile, and for as long as another connection
    held the store's write lock (up to SQLite's 30 s). Cancelled meanwhile,
    it waits for the thread (a set-up: bounded) and closes the store the
    plan opened, before the state_dir is let go of (a run after found it
    still being claimed)."""
    planned = on_a_thread(make_plan, "kernel run set-up")
    try:
        return await asyncio.shield(planned)
    except asyncio.CancelledError:
        while not planned.done():  # (shielded again if cancelled again, as `_in_thread` waits)
            try:
                await asyncio.shield(planned)
            except asyncio.CancelledError:
                continue
            except BaseException:  # (its failure: ours is the cancellation)
                break
        if not planned.cancelled() and planned.exception() is None and planned.result().snapshots is not None:
            planned.result().snapshots.close()
        raise


def run(flow: Dataflow, *, cores: int = 1, gc_threshold_during_run: int | None = DEFAULT_GC_THRESHOLD,
        clock=None, budget: float = 0.001, shares: dict[str, float] | None = None,
        stall_threshold: float = 0.025, state_dir=None,
        epoch_interval: float = DEFAULT_EPOCH_INTERVAL, process_id: int | None = None, peers=None,
        secret=None, tls=None, startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        heartbeat: float | None = None, dashboard: str | None = None,
        coordinator: str | None = None) -> None:
    """Run `flow` to completion (blocking).

    `cores=1`: one kernel on a new uvloop event loop in this thread.
    `cores=N`: one kernel process per core, each pinned to its own CPU, with
    exactly the results of one core. Inside a running event loop use
    `await run_async(flow)` instead. `gc_threshold_during_run` is the
    generation-0 GC threshold while the run lasts (None leaves the
    process's GC settings alone); `run_async` with one core leaves the
    thresholds alone, since it shares its process with the host
    application (it only keeps the host's heap out of full collections
    while it runs: `kernel/execution/_host_gc.py`).

    A cluster: `peers` lists every process's `host:port` (a string
    `"h0:p0,h1:p1"` or a list), `process_id` says which one this is. Each
    process runs `cores` kernels, numbered across the cluster, linked by
    authenticated websockets; the shared `secret` defaults to the
    environment variable KERNEL_SECRET; `tls=(cert, key, ca)` turns on TLS;
    peers may start in any order within `startup_timeout` seconds; each
    link checks every `heartbeat` seconds that it heard from its peer and
    gives the peer up after two silent periods (a cut cable; None: the
    environment's KERNEL_HEARTBEAT as it is when the run starts, where
    set, else DEFAULT_HEARTBEAT, 2.5). Every process must run the same
    flow with the same `cores`. `collect()` results are gathered on
    process 0 (empty elsewhere).

    `dashboard="HOST:PORT"` serves the run's metrics at
    `http://HOST:PORT/metrics` (Prometheus's text format) while it runs,
    and says where once it listens (`dashboard on http://HOST:PORT/`, at
    INFO by the logger `kernel.metrics.url`, the URL also the record's
    `url`: port 0's is picked by the system); a malformed address raises
    ValueError, one that cannot be listened on (a port in use)
    `kernel.metrics.MetricsServerError`, before anything runs.
    """
    _refuse_inside_a_pipeline_import("run")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("run() blocks and cannot be called from a running event loop; "
                           "use `await run_async(flow)` there")
    _check_flow(flow, "run")
    flow.graph.check_cycles()  # a cycle wired by hand, refused before any kernel starts
    _check_outputs(flow)
    _topics_coordinator(flow, coordinator)
    with _one_run_at_a_time(flow, "run"):
        flow._results_delivered([])  # a failed run leaves no earlier run's results in the handles
        with _state_dir_held(state_dir, process_id):  # (before the plan: run_async says why)
            plan = plan_for(lambda: flow, cores=cores, gc_threshold=gc_threshold_during_run, clock=clock,
                            budget=budget, shares=shares, stall_threshold=stall_threshold,
                            state_dir=state_dir, epoch_interval=epoch_interval, process_id=process_id,
                            peers=peers, secret=secret, tls=tls, startup_timeout=startup_timeout,
                            heartbeat=heartbeat, dashboard=dashboard)
            appended_to = _before_kernel_processes(flow, plan)
            try:
                flow._results_delivered(execute(plan, lambda: flow))
            finally:
                follow_to_their_end(appended_to)


def _before_kernel_processes(flow, plan) -> list:
    """Kernel processes are about to fork: a step that would use what they
    cannot of the caller's (add to one of its containers, write through its
    SQLite connection) is refused (`_caller_objects.py`), and the files the
    flow's steps write to hold nothing of ours they could write again
    (`_written_files.py`). Returns the files open for reading and writing
    whose position `follow_to_their_end` moves past what the kernels
    append, once the run is over (`_inherited_descriptors.py`)."""
    if plan.mode == THREAD:
        return []
    kernels = f"{plan.cores} kernel processes" if plan.mode == PROCESS else "a cluster's kernel processes"
    refuse_caller_objects(flow.graph, kernels)
    flush_before_fork(flow.graph)
    return read_write_files_at_their_end([node.factory for node in flow.graph.nodes])


def _check_flow(flow, caller: str) -> None:
    """run("pipeline.py") or run(stream) otherwise failed as "AttributeError:
    'str' object has no attribute 'graph'"."""
    from kernel.dataflow._api import Dataflow

    if not isinstance(flow, Dataflow):
        hint = ""
        if hasattr(flow, "flow"):
            hint = " (the flow the stream belongs to is its .flow)"
        elif isinstance(flow, str):
            hint = "; a pipeline file runs with `python -m kernel run FILE`"
        raise TypeError(f"{caller}() runs a Dataflow, got {flow!r}{hint}")


def _check_outputs(flow) -> None:
    """A flow of steps that only hand their results on (it ran to the end
    and threw every result away, without a word). An empty flow still runs
    (as it always has: a kernel for tasks of one's own)."""
    nodes = flow.graph.nodes
    if flow._skipped_counts:  # (read for what it counts: a file's malformed lines, `skipped_count`)
        return
    if nodes and all(node.kind[:1] and node.kind[0] in _HANDS_ON for node in nodes):
        raise ValueError(f"flow {flow.name!r} has no output: end a stream with collect(), sink(), print() "
                         "or to_files() (or publish it, or apply an operator of your own)")


# Steps of the library whose results go only to the steps after them: a flow
# of nothing else has no effect (a user's operator or source, `inspect`,
# `serve` and every sink may have one)
_HANDS_ON = frozenset({"IterableSource", "PartitionSource", "AsyncIterableSource", "FileSource",
                       "RedisStreamSource", "EventTimeSource", "Map", "Filter", "FlatMap", "KeyBy",
                       "MapValues", "Count", "Sum", "Reduce", "Fold", "StatefulMap"})


#: the pipeline file `python -m kernel.run` is importing (kernel/cli/_run.py), or None
importing_pipeline = None


def pipeline_import(path) -> None:
    """`python -m kernel.run` imports pipeline `path` (None: it is done)."""
    global importing_pipeline
    importing_pipeline = path


def _refuse_inside_a_pipeline_import(caller: str) -> None:
    """A pipeline file that runs its flow at import: the command runs it
    too (each record twice, on one core), or, in a kernel process on
    several, run() met the kernel's own loop."""
    if importing_pipeline is not None:
        from kernel.dataflow._errors import KernelError

        raise KernelError(
            f"{importing_pipeline} calls {caller}() as it is imported: `python -m kernel.run` runs the "
            f"file's flow itself; put the call under `if __name__ == \"__main__\":` (for `python "
            f"{importing_pipeline}`), or leave it out")


@contextlib.contextmanager
def _state_dir_held(state_dir, process_id) -> Iterator[None]:
    """The `state_dir` for this run alone (this process of a cluster: one
    lock a process id), while it runs: a second run on it (a retry, a
    cron job started twice) resumed from an epoch of the live run and
    snapshotted beside it into one store. An flock, so a run that dies
    (SIGKILL) leaves it free."""
    try:
        directory = None if state_dir is None else os.fsdecode(os.fspath(state_dir))
    except TypeError:
        directory = None  # (not a path: the plan's check says so)
    if directory is None:
        yield
        return
    import fcntl

    from kernel.dataflow._errors import KernelError

    path = os.path.join(directory, f".running-{process_id or 0}")
    made = not os.path.exists(directory)
    try:
        # (its run makes it anyway, a cluster's process too: made here, so
        # that a run on a state_dir not there yet holds it from the start; a
        # cluster's missing snapshots are an empty directory's as well)
        from kernel._durable import make_directories

        make_directories(directory)  # (its name durable: the run's complete epochs are in it)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        # not one to write in (a file there, no permission): the run's own
        # checks say so
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise KernelError(
                f"state_dir {directory!r} is in use by another run (its lock {path!r} is "
                "held): two runs on one state_dir would snapshot into one store; wait for that run to "
                "end, or give this one another state_dir") from None
        try:
            yield
        except BaseException:
            if made:  # a refused run leaves no directory it made (nothing but its lock in it)
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    os.rmdir(directory)
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def _one_run_at_a_time(flow, caller: str) -> Iterator[None]:
    """Two overlapping runs of one flow (run_async twice under gather, say)
    shared its sources: both read one iterator, each collect() got part of
    it and no error said so; with a state_dir both wrote the same store.
    The second is refused before it opens anything."""
    if getattr(flow, "_running", False):
        from kernel.dataflow._errors import KernelError

        raise KernelError(f"{caller}(): {flow!r} is already running, and a Dataflow runs once at a time "
                          "(its sources, sinks and collect() handles belong to the run): wait for that "
                          "run to end, or build another Dataflow for a run beside it")
    flow._running = True
    try:
        yield
    finally:
        flow._running = False


def _topics_coordinator(flow, coordinator: str | None) -> None:
    """`coordinator="HOST:PORT"`: where the flow's topics and services are
    registered and looked up (issue 18; else KERNEL_COORDINATOR). Kept on
    the flow, which every kernel process inherits."""
    if coordinator is not None:
        if not isinstance(coordinator, str) or ":" not in coordinator:
            raise ValueError(f"coordinator must be 'HOST:PORT', got {coordinator!r}")
        flow._topics_coordinator = coordinator



def _name_the_run() -> None:
    """Topics (issue 18): every kernel of a run registers its partitions
    under one publisher id, fixed here before kernel processes fork."""
    from kernel.topics._directory import new_run

    new_run()
