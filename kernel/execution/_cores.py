"""Thread-per-core: one pinned kernel process per core, supervised.

Why fork
--------
Kernel processes are started with `fork`. A flow built in a script or a test
holds lambdas and closures; with fork every kernel inherits the flow, the
rings and the doorbells as they are in memory, with no pickling at all (the
alternative, cloudpickle over a spawned interpreter, fails on closures over
unpicklable objects and adds a dependency and start-up time). The costs of
fork are known and handled: the parent forks before it has started anything
of its own (no loop running in it, no threads of ours); each child resets the
state it must not share (the running-loop marker, signal handlers) and leaves
with `os._exit`, so the parent's atexit handlers and buffered files are never
run twice. The project is Linux-only anyway (`sched_setaffinity`, eventfd).

Shared memory never leaks
-------------------------
The rings and doorbells are anonymous shared memory, mapped before any child
is forked: children inherit the mappings, and nothing is ever in /dev/shm,
so nothing is left there whatever happens (SIGKILL of every process, a
Ctrl-C while the rings are being made), and /dev/shm's size (64 MB in a
container by default) does not limit the rings (named segments outgrew it
at five kernels, and a kernel writing past it died of SIGBUS).

Supervision
-----------
The parent waits on every child's result pipe and process sentinel at once.
A child that raises sends its exception (pickled) and exits 1; a child that
exits or is killed without a result is reported with its exit code or signal.
Either way the parent kills the other kernels at once and raises
`KernelProcessError` naming the kernel and the cause (the kernel's own
exception, an `OperatorError` say, is its `__cause__`). Ctrl-C in the parent
stops every kernel; the kernels themselves ignore SIGINT so a terminal's
Ctrl-C reaches only the parent, and take every other signal's default
action, whatever handlers the parent's process had installed.

Clusters
--------
With a `ClusterPlan` the kernels are numbered across the cluster and one
more child, the link relay (`net/_relay.py`), holds this process's links to
the others, with a pair of rings to each local kernel. It is supervised like
a kernel: when the kernels have all finished, their results go to it, and
its own result ends the run (on process 0: every kernel's results). A relay
that fails (a peer lost, authentication failed) ends the run with its own
error, which names the peer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import pickle
import threading

from kernel._faults import signal_point
from kernel.scheduling._from_threads import call_soon_from_thread
from kernel.scheduling._signal_mask import main_thread_signals
from kernel.scheduling._watchdog import retire_if_idle

from ._child import _kernel_main, _libc, gate_record
from ._inherited_descriptors import close_listener, let_go_unreached, the_applications
from ._launcher_notes import read_notes
from ._listings import ListingBoard, agreed, agreeing_on_listings
from ._queued_logs import find_before_fork
from ._random_seeds import draw_for_kernels
from ._signals import held_signals
from ._standard_input import hide_from_multiprocessing
from ._supervisor import _supervise, join

log = logging.getLogger("kernel")

# Ring size per ordered pair of kernels. 4 MiB holds a few thousand batches
# of word-count pairs; a full ring only pauses the producer's sources.
RING_BYTES = 4 << 20


def _cpus_for(cores: int, skip: int = 0) -> list[int]:
    """The CPUs for `cores` kernels: this process's allowed CPUs, one
    hardware thread of every physical core before any core's second
    (`one_per_core_first`), after the first `skip` (kernels of other
    cluster processes on this host, which order them alike)."""
    available = one_per_core_first(sorted(os.sched_getaffinity(0)))
    return [available[(skip + i) % len(available)] for i in range(cores)]


def _kernel_cpus(cores: int, skip: int = 0) -> list[int | None]:
    """Each kernel's CPU, or None for all where the kernels are not to be
    pinned (`pin_kernels`)."""
    return _cpus_for(cores, skip) if pin_kernels() else [None] * cores


_PIN = {"1": True, "yes": True, "true": True, "on": True,
        "0": False, "no": False, "false": False, "off": False}


def pin_kernels(env=os.environ) -> bool:
    """Whether to pin the kernels, one a CPU, or leave them to Linux's
    scheduler. Pinned, each kernel keeps its CPU and caches; but two jobs
    that pin alike on CPUs they share (two pods on one node both put kernel
    0 on CPU 0) halve each other while other CPUs idle, far worse than an
    unpinned kernel's migrations. So they are pinned only to CPUs that look
    like this process's own: not where the CPU time it is given (its
    cgroup's quota: a container's CPU limit; SLURM_CPUS_ON_NODE or, in a
    job step, SLURM_CPUS_PER_TASK: a Slurm job's CPUs on this node, `slurm_cpus`)
    is less than the CPUs its affinity allows, and
    in a Kubernetes pod only where its CPUs are its own: not where its
    affinity is every CPU of the node (the kubelet's default CPU manager
    policy: every pod has all of them), and not without a CPU quota of as
    many CPUs as its affinity (the static policy gives a Guaranteed pod
    with whole CPUs its own set; every other pod has the node's shared
    pool, every CPU but those, with or without a limit). KERNEL_PIN_CPUS=1
    pins all the same, 0 never; auto (or unset) decides so."""
    knob = (env.get("KERNEL_PIN_CPUS") or "auto").strip().lower()
    if knob != "auto":
        if knob not in _PIN:
            raise ValueError(f"KERNEL_PIN_CPUS must be 1 (pin the kernels), 0 (do not) or auto, got {knob!r}")
        return _PIN[knob]
    allowed = len(os.sched_getaffinity(0))
    quota = cgroup_cpu_quota()
    given = [n for n in (quota, _slurm_cpus(env)) if n is not None]
    if given and min(given) < allowed:
        log.debug("kernels not pinned: this process is given %g CPUs' time, less than the %d CPUs it may "
                  "run on (KERNEL_PIN_CPUS=1 pins them)", min(given), allowed)
        return False
    if not env.get("KUBERNETES_SERVICE_HOST"):
        return True
    if allowed >= (os.cpu_count() or allowed):
        log.debug("kernels not pinned: a Kubernetes pod that may run on every CPU of the node "
                  "(KERNEL_PIN_CPUS=1 pins them)")
        return False
    if quota is None or not math.isclose(quota, allowed, rel_tol=0.01):
        # the static CPU manager's shared pool: every CPU but the Guaranteed pods' own
        log.debug("kernels not pinned: a Kubernetes pod whose %d CPUs are not its own (its CPU limit, %s, "
                  "is not as many: the node's shared pool) (KERNEL_PIN_CPUS=1 pins them)", allowed,
                  "none" if quota is None else f"{quota:g}")
        return False
    return True


def _slurm_cpus(env) -> int | None:
    """The CPUs a Slurm job was given on this node (`slurm_cpus`)."""
    given = slurm_cpus(env)
    return None if given is None else given[0]


# slurm.h: the greatest id of a step of `srun`; those above are Slurm's own (0xfffffffb the
# batch step, 0xfffffffc the extern, 0xfffffffa the interactive)
_SLURM_MAX_NORMAL_STEP_ID = 0xFFFFFFF0


def slurm_cpus(env=os.environ) -> tuple[int, str] | None:
    """The CPUs a Slurm job gives this process on this node, and the
    variable that says so: the fewer of SLURM_CPUS_PER_TASK's (a task's,
    where the job runs several on the node) and SLURM_CPUS_ON_NODE's (the
    job's); None outside a Slurm job (no SLURM_JOB_ID) or where neither
    is set to a count (ASCII digits, as Slurm writes them: `str.isdigit`
    also takes "²", which `int` refuses). SLURM_CPUS_PER_TASK only in a
    job step (`srun`: SLURM_STEP_ID set, to a step's number): a batch
    script (`sbatch -n 4 -c 2`) or an `salloc` shell is no task, and has
    the job's CPUs on the node, though Slurm sets SLURM_CPUS_PER_TASK
    there too; as has Slurm's special steps' (an id above
    _SLURM_MAX_NORMAL_STEP_ID: the batch step, the interactive step of
    `salloc` under LaunchParameters=use_interactive_step, which keeps
    salloc's environment)."""
    if not env.get("SLURM_JOB_ID"):
        return None
    names = ("SLURM_CPUS_ON_NODE",)
    step = env.get("SLURM_STEP_ID", "").strip()
    if step.isascii() and step.isdigit() and int(step) <= _SLURM_MAX_NORMAL_STEP_ID:
        names = ("SLURM_CPUS_PER_TASK", *names)
    given = [(int(text), name) for name in names
             if (text := env.get(name, "").strip()).isascii() and text.isdigit() and int(text) > 0]
    return min(given, key=lambda pair: pair[0]) if given else None


def cgroup_cpu_quota(cgroups: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs' worth of time this process's cgroup and its ancestors allow
    (the least of their quotas: cgroup v2's cpu.max, v1's
    cpu.cfs_quota_us / cpu.cfs_period_us), None where none is set or none
    can be read. A container that does not see its cgroup's path from
    the host (no cgroup namespace) finds its own at the mount's root."""
    try:
        with open(cgroups) as listing:
            lines = listing.read().splitlines()
    except OSError:
        return None
    found = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            mount, read = root, _v2_quota
        elif "cpu" in controllers.split(","):
            mount, read = os.path.join(root, controllers), _v1_quota
            if not os.path.isdir(mount):  # (mounted as cpu,cpuacct, linked as cpu)
                mount = os.path.join(root, "cpu")
        else:
            continue
        parts = [part for part in path.split("/") if part]
        found += [read(os.path.join(mount, *parts[:depth])) for depth in range(len(parts) + 1)]
    return min((quota for quota in found if quota is not None), default=None)


def _v2_quota(directory: str) -> float | None:
    try:
        with open(os.path.join(directory, "cpu.max")) as f:
            quota, period = f.read().split()
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(directory: str) -> float | None:
    try:
        with open(os.path.join(directory, "cpu.cfs_quota_us")) as q, \
                open(os.path.join(directory, "cpu.cfs_period_us")) as p:
            quota, period = int(q.read()), int(p.read())
        return None if quota < 0 else quota / period
    except (OSError, ValueError):
        return None


_SIBLINGS = "/sys/devices/system/cpu/cpu{}/topology/thread_siblings_list"


def one_per_core_first(cpus: list[int], siblings: str = _SIBLINGS) -> list[int]:
    """`cpus` (ascending) with the first allowed hardware thread of each
    physical core first, in CPU order, then the second of each, and so on:
    two kernels on the two threads of one core share its execution units
    and caches and get through far less than two cores (Linux numbers
    siblings (0, 8), (1, 9)... on most Intel machines, but (0, 1), (2, 3)...
    on others). `siblings` is the sysfs file naming each CPU's thread
    siblings; where it cannot be read (not Linux, a container hiding it),
    `cpus` as given."""
    allowed = set(cpus)
    rank = {}
    for cpu in cpus:
        try:
            with open(siblings.format(cpu)) as listing:
                core = _cpu_list(listing.read())
        except (OSError, ValueError):
            return cpus
        rank[cpu] = sum(1 for other in core if other < cpu and other in allowed)
    return sorted(cpus, key=lambda cpu: (rank[cpu], cpu))


def _cpu_list(text: str) -> list[int]:
    """A kernel CPU list, "0-3,8,10-11", as numbers."""
    out: list[int] = []
    for part in text.strip().split(","):
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out


class _KernelProcess(multiprocessing.get_context("fork").Process):
    """A kernel process. For the standard input: multiprocessing's bootstrap
    closes a child's `sys.stdin` and gives it /dev/null; a kernel process
    hides it first, and kernel 0 takes it back
    (kernel/execution/_standard_input.py)."""

    def _bootstrap(self, *args, **kwargs):
        hide_from_multiprocessing()
        return super()._bootstrap(*args, **kwargs)


def run_on_cores(build_runtime, cores: int, *, on_started=None, epochs=None, cluster=None,
                 cancel=None, link_report=None, agreement=None, listings=None) -> list[dict]:
    """Run `cores` kernel processes; returns each kernel's results, in order.

    `build_runtime(kernel_index, peers, transport, coordinator)` is called in
    each child and returns an awaitable that runs that kernel to completion
    and returns its results (a picklable dict). `epochs`, when snapshots are
    on, is `(open_store, interval, snapshots by kernel or None,
    restored_epoch, launcher_store, finished_before)`: each child opens its
    own store and coordinates epochs with this process
    (kernel/_coordinate.py). `cluster`
    (a `ClusterPlan`) makes this process one of several linked by websockets:
    the results are every kernel's on process 0, none elsewhere. `cancel`, a
    connection, stops the run (`RunCancelled`) when it becomes readable.
    `link_report(sent bytes by peer process)`, in a cluster's relay, is
    told what its links have sent, now and then (metrics).
    On a cluster with snapshots, `epochs`' snapshots and restored epoch are
    None: the processes agree on the epoch when they have linked up
    (`agreement`, `(offer, decide, prepare)`: see `net/_relay.py`; the
    relay calls `prepare(plan)` with the decision's plan), the relay tells
    the launcher and writes it into the kernels' gate, and each kernel
    reads its own snapshot of it.
    The kernels share one listing of each bounded source's files (a
    `ListingBoard`, `_listings.py`); a cluster's are process 0's of
    `listings` (each launcher's, agreed on when the links are up).
    """
    from kernel.net import Doorbell, ProcessTransport, SpscRing
    from kernel.net._transport import RelayEnds

    # run_async (it alone passes `cancel`), or `run` on a thread that is not
    # the main one (`asyncio.to_thread(run, flow, cores=N)`): forked from an
    # application, whose sockets the kernels let go (`_close_inherited_streams`).
    # (Under `to_thread`, a connection the application closed reached its
    # client only when the run ended.)
    embedded = cancel is not None or threading.current_thread() is not threading.main_thread()

    # the application's pipes and sockets, listed before anything of
    # ours is made: each child lets go of those its work does not reach
    inherited = the_applications()
    context = multiprocessing.get_context("fork")
    _libc()  # inherited by every child
    draw_for_kernels()
    retire_if_idle()  # the watchdog thread a run of one kernel left (a fork beside it is warned of)
    find_before_fork()  # the QueueHandlers whose listener's thread the kernels will not have
    # What the kernels import where used (json: to_files's encoder, made by
    # its first batch; JSON log lines; the epochs' kernel side), imported
    # here, before the fork: a thread of this process importing it meanwhile
    # holds its import lock in each child too, where nothing ever releases it
    # (the kernel hung on it).
    import json  # noqa: F401

    if epochs is not None:
        from kernel.runtime import _coordinate  # noqa: F401
    if cluster is not None:
        # The links process's: the IDNA codec (and its stringprep), which
        # aiohttp loads to encode a peer's host, a name or an address.
        import encodings.idna  # noqa: F401

    rings: dict[tuple[int, int], SpscRing] = {}
    bells: list[Doorbell] = []
    children: list = []
    pipes: list = []
    commit_pipes: list = []
    relay_rings: list = []
    handover = None  # launcher -> relay: the kernels' results, or why to abort
    # Kernels of a cluster wait until its links are up (the relay then writes
    # one byte per kernel into this pipe): nothing is computed, opened or
    # written for a cluster that never forms, and a failure can always be
    # told to the peers. A relay that dies first leaves the kernels waiting
    # (end of file, no byte) until the launcher, told of its error, stops them.
    gate = os.pipe() if cluster else None
    board = ListingBoard()  # (after `the_applications`: not one of the application's files)
    if cluster is not None and listings:
        agreement = agreeing_on_listings(agreement, listings, cluster.process)
    first = cluster.first_kernel if cluster else 0
    peers = cluster.kernels if cluster else cores
    try:
        for src in range(cores):
            for dst in range(cores):
                if src != dst:
                    # anonymous, mapped here and inherited: nothing in /dev/shm
                    rings[(src, dst)] = SpscRing.create_inherited(RING_BYTES, prefix="kernel")
        bells = [Doorbell() for _ in range(cores)]
        if cluster is not None:
            bells.append(Doorbell())  # the relay's
            for _ in range(cores):
                relay_rings.append(tuple(SpscRing.create_inherited(RING_BYTES, prefix="relay") for _ in "io"))
        local_bells = {first + k: bells[k] for k in range(cores)}
        cpus = _kernel_cpus(cores, cluster.cores * cluster.rank_on_host if cluster else 0)
        for index in range(cores):
            receiver, sender = context.Pipe(duplex=False)
            commits_in, commits_out = context.Pipe(duplex=False) if epochs else (None, None)
            relay = None
            if cluster is not None:
                relay = RelayEnds(*relay_rings[index], bells[cores], cluster.remote_kernels())
            transport = ProcessTransport(
                first + index,
                peers,
                {first + dst: rings[(index, dst)] for dst in range(cores) if dst != index},
                {first + src: rings[(src, index)] for src in range(cores) if src != index},
                local_bells,
                relay,
            )
            child = _KernelProcess(
                target=_kernel_main,
                args=(first + index, peers, cpus[index], build_runtime, transport, sender, os.getpid(),
                      epochs, commits_in, gate, embedded, inherited),
                kwargs={"listener": cluster and cluster.listen_fd, "listings": board},
                name=f"kernel-{first + index}",
                daemon=True,
            )
            with held_signals():  # a Ctrl-C meanwhile is raised once the kernel is in `children`
                child.start()
                signal_point("forked")  # tests: a Ctrl-C with a kernel forked, not yet in `children`
                children.append(child)
                pipes.append(receiver)
                sender.close()
                if commits_in is not None:
                    commits_in.close()
                    commit_pipes.append(commits_out)
        if cluster is not None:
            receiver, sender = context.Pipe(duplex=False)
            results_in, handover = context.Pipe(duplex=False)
            child = context.Process(
                target=_kernel_main,
                args=(first, peers, None, _relay_runtime(cluster, relay_rings, bells, results_in, gate,
                                                         sender, agreement, link_report,
                                                         (board, listings) if listings else None),
                      None, sender, os.getpid()),
                kwargs={"close_streams": embedded, "inherited": inherited},
                name="links",
                daemon=True,
            )
            with held_signals():
                child.start()
                children.append(child)
                pipes.append(receiver)
            sender.close()
            results_in.close()
            close_listener(cluster.listen_fd)  # (the relay's now)
            for fd in gate:
                os.close(fd)
            gate = None
        if on_started is not None:
            on_started([child.pid for child in children])
        coordinator = None
        if epochs is not None:
            from kernel.runtime._coordinate import LauncherSide

            def send_commit(epoch: int, final: bool) -> None:
                for pipe in commit_pipes:
                    try:
                        pipe.send((epoch, final))
                    except OSError:
                        pass  # that kernel is gone; supervision reports it

            if cluster is None:
                coordinator = LauncherSide(epochs[4], cores, epochs[3], send_commit)
            else:
                from kernel.runtime._cluster_epochs import ClusterLauncherSide

                def send(process: int, message: tuple) -> None:
                    try:
                        handover.send(("message", (process, message)))
                    except OSError:
                        pass  # the relay is gone; supervision reports it

                coordinator = ClusterLauncherSide(epochs[4], cores, cluster.process, cluster.processes,
                                                  send, send_commit)
        relay = None if cluster is None else (first, handover)
        try:
            return _supervise(children, pipes, coordinator, relay, cancel)
        finally:
            if cluster is not None and coordinator is not None:
                coordinator.close()  # (a one-process run's store is its Snapshots', closed with them)
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
        for child in children:
            join(child, 5)  # (on its pidfd: see _supervisor.join)
            if child.exitcode is not None:
                # its sentinel pipe and pidfd now, not when collected: an error
                # the application keeps holds this frame, and with it the
                # children (two descriptors a kernel, for as long as it is kept)
                child.close()
        for pipe in pipes:
            read_notes(pipe)  # (its kernel has ended: what it told before a failure ended the run)
            pipe.close()
        for pipe in commit_pipes:
            pipe.close()
        if handover is not None:
            handover.close()
        for ring in [*rings.values(), *(r for pair in relay_rings for r in pair)]:
            ring.close()
        for bell in bells:
            bell.close()
        for fd in gate or ():
            os.close(fd)
        board.close()


def _open_gate(gate_out: int, kernels: int, epoch: int = 0, finished: bool = False, plan=None) -> None:
    """Every link is up: one record for each kernel waiting on the gate,
    the epoch the run restores (0: none), whether it was the end of a
    finished run, and which store files hold it (`gate_record`). One write
    of all the records (atomic: at most PIPE_BUF bytes for up to 107
    kernels a process, past the 100 `run` takes), so each kernel's read
    gets a whole one."""
    os.write(gate_out, gate_record(epoch, finished, plan) * kernels)
    os.close(gate_out)


def _relay_runtime(plan, ends, bells, handover, gate, launcher=None, agreement=None, report=None,
                   listings=None):
    """What the relay child runs: link up (agreeing on the restored epoch,
    with an `agreement`), open the kernels' gate, relay, and end with the
    results (or tell the peers this process failed). The launchers' epoch
    messages pass through it both ways (`launcher`: its result pipe).
    `report(sent bytes by peer)`: the links' metrics, now and then.
    `listings`: (the kernels' board, this launcher's listings): process 0's,
    agreed on too, are posted on the board before the gate opens."""

    async def run_relay(_index, _peers, _transport, _coordinator):
        from kernel.net._relay import LinkRelay

        # (it runs no step: none of the application's pipes and sockets, but the
        # listening socket its executor handed this process, which it serves)
        let_go_unreached(every_socket=True, keep=set(plan.listen_fds))
        gate_in, gate_out = gate
        os.close(gate_in)
        loop = asyncio.get_running_loop()
        local = loop.create_future()

        def on_linked(decision=None) -> None:
            if listings is not None:
                board, own = listings
                decision, agreed_listings = agreed(decision, own)
                board.post(agreed_listings)
            if decision is None:
                _open_gate(gate_out, len(ends))
                return
            epoch, finished, plan = pickle.loads(decision)
            agreement[2](plan)  # this process's store file of the generation written, claimed
            launcher.send(("restored", (epoch, finished, plan)))
            _open_gate(gate_out, len(ends), epoch, finished, plan)

        def to_launcher(process: int, body: bytes) -> None:
            launcher.send(("message", (process, pickle.loads(body))))

        relay = LinkRelay(plan, ends, bells[: len(ends)], bells[len(ends)], on_linked=on_linked,
                          agreement=agreement and agreement[:2], on_message=to_launcher, report=report)

        def on_message(kind, payload) -> None:
            if kind == "abort":
                relay.abort(*payload)  # (why, kernel, step: `_supervisor._abort`)
            elif kind == "message":
                process, message = payload
                relay.send_message(process, pickle.dumps(message, protocol=5))
            elif not local.done():
                local.set_result(payload)

        def read_handover() -> None:
            # A thread, not loop.add_reader: uvloop makes a reader's fd
            # non-blocking, and a results message larger than the pipe's
            # buffer then fails half-read (EAGAIN).
            while True:
                try:
                    kind, payload = handover.recv()
                except (EOFError, OSError):  # the launcher is gone; PDEATHSIG ends us
                    return
                if not call_soon_from_thread(loop, on_message, kind, payload) or kind == "abort":
                    return

        with main_thread_signals():
            threading.Thread(target=read_handover, name="handover", daemon=True).start()
        return await relay.run(local)

    return run_relay


