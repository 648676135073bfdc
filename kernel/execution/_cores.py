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
The rings are created, mapped, and their names unlinked before any child is
forked: children inherit the mappings, so nothing is left in /dev/shm whatever
happens next, SIGKILL of every process included.

Supervision
-----------
The parent waits on every child's result pipe and process sentinel at once.
A child that raises sends its exception (pickled) and exits 1; a child that
exits or is killed without a result is reported with its exit code or signal.
Either way the parent kills the other kernels at once and raises
`KernelProcessError` naming the kernel and the cause (the kernel's own
exception, an `OperatorError` say, is its `__cause__`). Ctrl-C in the parent
stops every kernel; the kernels themselves ignore SIGINT so a terminal's
Ctrl-C reaches only the parent.

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
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait

import uvloop

from kernel.dataflow._errors import KernelError, keep_cause_traceback

# Ring size per ordered pair of kernels. 4 MiB holds a few thousand batches
# of word-count pairs; a full ring only pauses the producer's sources.
RING_BYTES = 4 << 20
_ABORT_GRACE = 2.0  # seconds a relay gets to tell the peers why this process stops


class KernelProcessError(KernelError):
    """A kernel process failed: raised, exited, or was killed."""

    def __init__(self, kernel: int, cause: str) -> None:
        super().__init__(kernel, cause)
        self.kernel = kernel
        self.cause = cause

    def __str__(self) -> str:
        return f"kernel {self.kernel} {self.cause}"


def _cpus_for(cores: int, skip: int = 0) -> list[int]:
    """The CPUs for `cores` kernels: this process's allowed CPUs in order,
    after the first `skip` (kernels of other cluster processes on this host)."""
    available = sorted(os.sched_getaffinity(0))
    return [available[(skip + i) % len(available)] for i in range(cores)]


def run_on_cores(build_runtime, cores: int, *, on_started=None, epochs=None, cluster=None,
                 cancel=None) -> list[dict]:
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
    """
    from kernel.net import Doorbell, ProcessTransport, SpscRing
    from kernel.net._transport import RelayEnds

    context = multiprocessing.get_context("fork")
    _libc()  # inherited by every child
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
    first = cluster.first_kernel if cluster else 0
    peers = cluster.kernels if cluster else cores
    try:
        for src in range(cores):
            for dst in range(cores):
                if src != dst:
                    ring = SpscRing.create(RING_BYTES, prefix="kernel")
                    ring.unlink()  # mapped here and inherited: nothing to leak
                    rings[(src, dst)] = ring
        bells = [Doorbell() for _ in range(cores)]
        if cluster is not None:
            bells.append(Doorbell())  # the relay's
            for _ in range(cores):
                pair = tuple(SpscRing.create(RING_BYTES, prefix="relay") for _ in "io")
                for ring in pair:
                    ring.unlink()
                relay_rings.append(pair)
        local_bells = {first + k: bells[k] for k in range(cores)}
        cpus = _cpus_for(cores, cluster.cores * cluster.rank_on_host if cluster else 0)
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
            child = context.Process(
                target=_kernel_main,
                args=(first + index, peers, cpus[index], build_runtime, transport, sender, os.getpid(),
                      epochs, commits_in, gate),
                name=f"kernel-{first + index}",
                daemon=True,
            )
            child.start()
            sender.close()
            if commits_in is not None:
                commits_in.close()
                commit_pipes.append(commits_out)
            children.append(child)
            pipes.append(receiver)
        if cluster is not None:
            receiver, sender = context.Pipe(duplex=False)
            results_in, handover = context.Pipe(duplex=False)
            child = context.Process(
                target=_kernel_main,
                args=(first, peers, None, _relay_runtime(cluster, relay_rings, bells, results_in, gate),
                      None, sender, os.getpid()),
                name="links",
                daemon=True,
            )
            child.start()
            sender.close()
            results_in.close()
            for fd in gate:
                os.close(fd)
            gate = None
            children.append(child)
            pipes.append(receiver)
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

            coordinator = LauncherSide(epochs[4], cores, epochs[3], send_commit)
        relay = None if cluster is None else (first, handover)
        return _supervise(children, pipes, coordinator, relay, cancel)
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
        for child in children:
            child.join(5)
        for pipe in pipes:
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


class RunCancelled(KernelError):
    """The caller cancelled the run (`run_async` was cancelled)."""


def _supervise(children, pipes, coordinator=None, relay=None, cancel=None) -> list[dict]:
    """Wait for every kernel's result; the first failure ends everything.
    Epoch messages on the way go to the `coordinator`. With a `relay`
    (`(first kernel, handover pipe)`, the last child), the kernels' results
    are handed to it once all are in, and its result is the run's; a kernel
    that fails is reported to the peers through it before it is stopped."""
    try:
        return _wait_for_results(children, pipes, coordinator, relay, cancel)
    except KeyboardInterrupt:
        _abort(children, relay, "interrupted (Ctrl-C)")
        raise


def _wait_for_results(children, pipes, coordinator, relay, cancel) -> list[dict]:
    results: list = [None] * len(children)
    pending = set(range(len(children)))
    kernels = len(children) - (relay is not None)
    first = relay[0] if relay is not None else 0
    while pending:
        handles = {pipes[i]: i for i in pending}
        handles.update({children[i].sentinel: i for i in pending})
        if cancel is not None:
            handles[cancel] = None
        for handle in wait(list(handles)):
            index = handles[handle]
            if index is None:
                error = RunCancelled("the run was cancelled")
                _abort(children, relay, error)
                raise error
            if index not in pending:
                continue
            # Readable pipe or exited child: either way the pipe now holds the
            # result, an error, or end-of-file (died without a word).
            try:
                status, payload = pipes[index].recv()
            except EOFError:
                if index == kernels:
                    _kill_all(children)
                    raise KernelError(f"the links process {_death(children[index])}") from None
                error = KernelProcessError(first + index, _death(children[index]))
                _abort(children, relay, error)
                raise error from None
            if status == "error":
                if index == kernels:
                    _kill_all(children)
                    raise _relay_error(payload)
                error = _kernel_error(first + index, payload)
                _abort(children, relay, error)
                raise error
            if status in ("durable", "finished"):
                coordinator.message(index, (status, payload))
                continue
            results[index] = payload
            pending.discard(index)
            if relay is not None and pending == {kernels}:
                relay[1].send(("results", {first + k: results[k] for k in range(kernels)}))
    if relay is not None:
        return results[kernels] or []
    return results


def _abort(children, relay, error) -> None:
    """Stop everything; with a relay, first let it tell the peers why (so
    they report this process's error, not just a lost link)."""
    if relay is None or not children[-1].is_alive():
        _kill_all(children)
        return
    _kill_all(children[:-1])
    try:
        relay[1].send(("abort", str(error)))
        children[-1].join(_ABORT_GRACE)
    except OSError:
        pass
    _kill_all(children)


def _kill_all(children) -> None:
    for child in children:
        if child.is_alive():
            child.kill()


def _death(child) -> str:
    child.join(5)
    code = child.exitcode
    if code is None:
        return "stopped responding"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code} before finishing"


def _kernel_error(index: int, payload) -> KernelProcessError:
    kind, blob, text = payload
    cause = None
    if blob is not None:
        try:
            cause = pickle.loads(blob)
        except Exception:  # an exception that does not unpickle: keep its text
            cause = None
    err = KernelProcessError(index, f"failed: {kind}: {cause if cause is not None else text}")
    if cause is not None:
        err.__cause__ = cause
    err.remote_traceback = text
    return err


def _relay_error(payload) -> BaseException:
    """A failed relay's own error (`PeerLost`, `AuthenticationFailed`...):
    it names the peer, which is what the user needs."""
    kind, blob, text = payload
    if blob is not None:
        try:
            return pickle.loads(blob)
        except Exception:
            pass
    return KernelError(f"links process failed: {kind}: {text.strip().splitlines()[-1]}")


def _open_gate(gate_out: int, kernels: int) -> None:
    """Every link is up: one byte for each kernel waiting on the gate."""
    os.write(gate_out, b"g" * kernels)
    os.close(gate_out)


def _relay_runtime(plan, ends, bells, handover, gate):
    """What the relay child runs: link up, open the kernels' gate, relay,
    and end with the results (or tell the peers this process failed)."""

    async def run_relay(_index, _peers, _transport, _coordinator):
        from kernel.net._relay import LinkRelay

        gate_in, gate_out = gate
        os.close(gate_in)
        loop = asyncio.get_running_loop()
        local = loop.create_future()
        relay = LinkRelay(plan, ends, bells[: len(ends)], bells[len(ends)],
                          on_linked=lambda: _open_gate(gate_out, len(ends)))

        def on_message(kind, payload) -> None:
            if kind == "abort":
                relay.abort(payload)
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
                loop.call_soon_threadsafe(on_message, kind, payload)
                if kind == "abort":
                    return

        threading.Thread(target=read_handover, name="handover", daemon=True).start()
        return await relay.run(local)

    return run_relay


_libc_handle = None


def _libc():
    """libc through ctypes, loaded once in the launcher before it forks: in
    each kernel, importing ctypes and loading libc took ~2.3 ms of its
    start-up (a two-kernel run of a tiny flow: ~16 ms in all)."""
    global _libc_handle
    if _libc_handle is None:
        import ctypes

        _libc_handle = ctypes.CDLL(None, use_errno=True)
    return _libc_handle


def _die_with_parent(launcher_pid: int) -> None:
    """Ask Linux to SIGKILL this kernel when the launcher dies, even by SIGKILL
    (prctl PR_SET_PDEATHSIG), so no kernel outlives its run."""
    PR_SET_PDEATHSIG = 1
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != launcher_pid:  # it died before the prctl took effect
        os._exit(1)


def _kernel_main(index, peers, cpu, build_runtime, transport, conn, launcher_pid,
                 epochs=None, commits=None, gate=None) -> None:
    """A kernel process: pinned, one uvloop, nothing else."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _die_with_parent(launcher_pid)
        if cpu is not None:  # the link relay is not pinned: it shares the kernels' CPUs
            os.sched_setaffinity(0, {cpu})
        asyncio.events._set_running_loop(None)  # the parent's marker survives fork on 3.11
        if gate is not None:  # a cluster's kernel: wait for the links
            os.close(gate[1])
            if not os.read(gate[0], 1):  # the relay failed: the launcher stops us
                while True:
                    time.sleep(3600)
            os.close(gate[0])
        coordinator = None
        if epochs is not None:
            from kernel.runtime._coordinate import KernelSide

            open_store, interval, snapshots, restored_epoch, _, finished_before = epochs
            coordinator = KernelSide(open_store(), index, conn.send, commits, interval,
                                     None if snapshots is None else snapshots[index], restored_epoch,
                                     finished_before)
        results = uvloop.run(build_runtime(index, peers, transport, coordinator))
        conn.send(("ok", results))
        status = 0
    except BaseException as exc:  # everything goes back to the parent
        text = "".join(traceback.format_exception(exc))
        keep_cause_traceback(exc)
        try:
            blob = pickle.dumps(exc)
            pickle.loads(blob)
        except Exception:
            blob = None
        try:
            conn.send(("error", (type(exc).__name__, blob, text)))
        except Exception:
            pass
    finally:
        # os._exit skips interpreter shutdown: flush what print() buffered.
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        try:
            conn.close()
        finally:
            os._exit(status)
