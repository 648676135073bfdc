"""What a kernel process (or a cluster's link relay) runs after `fork`:
pinned to its CPU, dying with its launcher, one uvloop and nothing else,
its result or its error sent back over a pipe."""

from __future__ import annotations

import asyncio
import atexit
import os
import pickle
import signal
import socket
import stat
import struct
import sys
import threading
import time
import traceback
import weakref

import uvloop

from kernel.dataflow._errors import keep_cause_traceback
from kernel.scheduling._continues import note_continues
from kernel.scheduling._errors import carry_causes

from ._inherited_descriptors import close_listener, note_inherited
from ._launcher_notes import in_kernel_process
from ._listings import use_here
from ._queued_logs import emit_queued_logs_here, shut_logging_down_at_exit
from ._random_seeds import seed_kernel
from ._signals import release_in_kernel
from ._standard_input import note_let_go, take_standard_input
from ._written_files import line_buffered

_libc_handle = None
# What a cluster's kernel reads from its gate: the epoch the run restores
# (0: a fresh start), whether it was the end of a finished run, the
# generation of store files this run writes (the epoch it started from:
# `kernel.state._generations`), and the one it reads the restored epoch
# from when that is another (its epoch, -1 when the same; whether a
# cluster's; its shape, processes and cores, 0 for none; how many kernels
# wrote it), and whether each kernel restores from every old kernel's
# snapshot though the shape is the same (a step needs it: `resume_checks`).
GATE_RECORD = struct.Struct("<qBqqBIIIB")


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


def _default_signals() -> None:
    """Signal handlers the launcher's process had (an application's
    `loop.add_signal_handler(SIGTERM, ...)` around `run_async`, the CLI's
    SIGTERM handler) are not a kernel's: back to the default. Inherited
    through fork, asyncio's handler (a no-op that writes to the host loop's
    wakeup fd) made a kernel ignore SIGTERM: `kill <kernel pid>` left the
    run going as if nothing had been sent."""
    for sig in signal.valid_signals():
        if sig == signal.SIGINT:  # ignored: a terminal's Ctrl-C is the launcher's to handle
            continue
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):  # a signal Python cannot set
            continue
    try:
        signal.set_wakeup_fd(-1)  # the host loop's, not ours (uvloop sets its own)
    except (ValueError, OSError):
        pass


def _close_inherited_streams() -> None:
    """Close every stream socket (TCP, Unix stream) this process inherited
    from the application that forked it: its listening ports and its
    clients' connections. No kernel uses them (the kernels' own channels
    are pipes, eventfds and shared memory), but while a kernel held a copy,
    a connection the application closed stayed open (its client never saw
    the end of it) and a server it closed kept its port bound, accepting
    connections nobody served, for as long as the run ran: for ever, for a
    stream. A flow's own connections are made in the kernel (`open`)."""
    # Not os.close: the application's socket objects, inherited too, still
    # hold those numbers, and one that a kernel used later (a logging
    # SocketHandler's) wrote into, then closed, whatever had been given the
    # freed number meanwhile (the kernel's loop: uvloop aborted, SIGABRT; or
    # its own connections). Each is replaced by an unconnected socket
    # instead: the application's connection and port are let go, the number
    # stays taken, and a write to it fails (ENOTCONN) rather than landing
    # elsewhere.
    inherited = [int(name) for name in os.listdir("/proc/self/fd")]
    placeholder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for fd in inherited:
            if fd > 2 and fd != placeholder.fileno():
                _let_go_if_stream(fd, placeholder.fileno())
    finally:
        placeholder.close()


def _let_go_if_stream(fd: int, placeholder: int) -> None:
    """Put `placeholder` in `fd`'s place if `fd` is a stream socket."""
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return
        probe = socket.socket(fileno=fd)  # (reads its type; detached below, so not closed)
        kind = probe.type
        probe.detach()
    except OSError:  # the directory's own fd, closed meanwhile
        return
    if kind == socket.SOCK_STREAM:
        os.dup2(placeholder, fd, inheritable=False)
        note_let_go(fd)  # (a source that reads it says why: kernel/operators/_sources.py)


def _wait_at_gate(fd: int) -> tuple:
    """Wait until the relay has linked up: (restored epoch, finished,
    plan), as `gate_record` packed them."""
    record = os.read(fd, GATE_RECORD.size)
    if len(record) < GATE_RECORD.size:  # the relay failed: the launcher stops us
        while True:
            time.sleep(3600)
    epoch, finished, written, source, cluster, processes, cores, kernels, cut = GATE_RECORD.unpack(record)
    shape = (processes, cores) if processes else None
    return epoch, bool(finished), (written, None if source < 0 else ((source, bool(cluster), shape), kernels,
                                                                     None, bool(cut) or None))


def gate_record(epoch: int = 0, finished: bool = False, plan=None) -> bytes:
    """One kernel's record of the gate: `plan` is (generation written,
    ((source epoch, cluster, shape), kernels, key groups, why cut) or None,
    ...), None on a fresh start."""
    written, source = plan[:2] if plan else (0, None)
    (src, cluster, shape), kernels = source[:2] if source else ((-1, False, None), 0)
    cut = bool(source and len(source) > 3 and source[3])
    return GATE_RECORD.pack(epoch, finished, written, src, cluster, *(shape or (0, 0)), kernels, cut)


def _forget_the_callers_exit_handlers() -> None:
    """`atexit._clear()`, and `weakref.finalize`'s hook back for the
    kernel's own finalizers: it registers that once a process, so with the
    caller's hook cleared a finalizer made in the kernel (a
    TemporaryDirectory a step made) never ran, where one kernel runs it at
    exit. The caller's finalizers, inherited, stay the caller's (its
    TemporaryDirectory is not removed by each kernel). And `logging.shutdown`
    for the kernel's own handlers (kernel/execution/_queued_logs.py)."""
    atexit._clear()
    shut_logging_down_at_exit()  # (registered first, it runs last, as at an interpreter's exit)
    for info in list(weakref.finalize._registry.values()):
        info.atexit = False
    weakref.finalize._registered_with_atexit = True
    atexit.register(weakref.finalize._exitfunc)


def _exit_as_an_interpreter(failed: bool = False) -> None:
    """What an interpreter does at its exit, before a kernel leaves by
    `os._exit`: wait for the threads started in the kernel (not daemon
    ones), a ThreadPoolExecutor's queued work too, then run its exit
    handlers (one raising is printed on stderr). Before, a kernel killed
    the work a step had left to threads, which one kernel finishes at the
    caller's exit. Only the kernel's own: what it inherited from the caller
    is the caller's (`threading._shutdown` would run the caller's hooks
    too, on its executors' queues as they were at the fork). A kernel that
    `failed` runs its exit handlers without waiting for its threads: one
    that never ends would keep the failure from the caller for good (on one
    kernel the caller gets it at once), and the other kernels waiting."""
    if not failed:
        _wait_for_the_kernels_threads()
    atexit._run_exitfuncs()
    _hand_on_queued_puts(_QUEUE_WAIT_FAILED if failed else _QUEUE_WAIT)


# seconds at most for a multiprocessing.Queue's pipe to take its records (a failed kernel: less)
_QUEUE_WAIT, _QUEUE_WAIT_FAILED = 5.0, 1.0


def _hand_on_queued_puts(wait: float) -> None:
    """What a step put to a `multiprocessing.Queue` (the caller's, or a
    logging QueueHandler's) waits in the queue's feeder thread until it is
    written to its pipe: a daemon thread, which `os._exit` killed, and the
    records it held were lost without a word (of 2,000 put on two kernels,
    ~700). An interpreter's exit (multiprocessing's own processes, one
    kernel) flushes it: the queue's finalizers, registered in this kernel
    (a fork's bootstrap clears the caller's). Bounded: a pipe nobody reads
    while the run runs holds ~64 KiB, and waiting for a reader that comes
    only after the run would wait for ever; so it is said instead."""
    util = sys.modules.get("multiprocessing.util")
    if util is None:
        return
    feeders = [thread for thread in threading.enumerate()
               if thread.name == "QueueFeederThread" and thread.is_alive()]
    if not feeders:
        return
    try:
        util._run_finalizers(0)  # (the queues' close: each feeder ends once it has written all)
    except Exception:
        pass
    deadline = time.monotonic() + wait
    for feeder in feeders:
        feeder.join(max(0.0, deadline - time.monotonic()))
    if any(feeder.is_alive() for feeder in feeders):
        try:
            sys.stderr.write(
                f"kernel process {os.getpid()}: records put to a multiprocessing.Queue could not all "
                f"be written to it within {wait:g} s of the run's end, and are lost: nobody read the "
                "queue while the run ran (its pipe was full). Read it as the run goes (a thread, a "
                "logging QueueListener)\n")
            sys.stderr.flush()
        except Exception:
            pass


def _wait_for_the_kernels_threads() -> None:
    current = threading.current_thread()
    futures = sys.modules.get("concurrent.futures.thread")
    if futures is not None:  # its exit hook, for the kernel's executors alone
        # (the caller's workers are not alive here: a fork copies the forking thread alone)
        workers = [(thread, queue) for thread, queue in list(futures._threads_queues.items())
                   if thread.is_alive()]
        if workers:
            futures._shutdown = True
            for _, queue in workers:
                queue.put(None)
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()


def _kernel_main(index, peers, cpu, build_runtime, transport, conn, launcher_pid,
                 epochs=None, commits=None, gate=None, close_streams=False, inherited=None,
                 listener=None, listings=None) -> None:
    """A kernel process: pinned, one uvloop, nothing else. `close_streams`
    (a run of `run_async`, forked from an application): close the stream
    sockets inherited from it (`_close_inherited_streams`). `inherited`:
    the application's pipes and sockets, which the kernel lets go of
    where its steps do not reach them (`_inherited_descriptors.py`).
    `listener`: a cluster's listening socket for its links, the relay's
    alone (`close_listener`). `listings`: the run's `ListingBoard`, on
    which its kernels share one listing of their files."""
    status = 1
    # A kernel leaves by os._exit, which runs no exit handler: those of its
    # own (a pipeline file's module-level `atexit.register`, as each kernel
    # imports it under `--cores N`; a client a function made) run when its
    # run ends, as at an interpreter's exit on one kernel; never the
    # caller's, inherited across the fork (they would run N more times:
    # a TemporaryDirectory's cleanup, the caller's summary).
    _forget_the_callers_exit_handlers()
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _default_signals()
        note_continues()  # a stop is not an operator's stall (kernel/scheduling/_continues.py)
        release_in_kernel()  # (blocked across the fork: `_signals.py`)
        note_inherited(inherited)
        close_listener(listener)
        use_here(listings)
        if close_streams:
            _close_inherited_streams()
        take_standard_input(index, peers)
        in_kernel_process(conn)
        emit_queued_logs_here()
        seed_kernel(index)
        _output_by_whole_lines()
        _die_with_parent(launcher_pid)
        if cpu is not None:  # the link relay is not pinned: it shares the kernels' CPUs
            os.sched_setaffinity(0, {cpu})
        asyncio.events._set_running_loop(None)  # the parent's marker survives fork on 3.11
        agreed = None
        if gate is not None:  # a cluster's kernel: wait for the links
            os.close(gate[1])
            agreed = _wait_at_gate(gate[0])
            os.close(gate[0])
        coordinator = None
        if epochs is not None:
            from kernel.runtime._coordinate import KernelSide

            open_store, interval, snapshots, restored_epoch, _, finished_before = epochs
            if restored_epoch is None:  # a cluster: the epoch its processes agreed on
                restored_epoch, finished_before, plan = agreed
                store = open_store(plan[0])
                snapshot = snapshots(store, index, restored_epoch, plan) if restored_epoch else None
            else:
                store = open_store()
                snapshot = None if snapshots is None else snapshots[index]
            coordinator = KernelSide(store, index, conn.send, commits, interval, snapshot, restored_epoch,
                                     finished_before)
        results = uvloop.run(build_runtime(index, peers, transport, coordinator))
        _exit_as_an_interpreter()
        _flush_standard_streams()
        conn.send(("ok", results))
        status = 0
    except BaseException as exc:  # everything goes back to the parent
        text = "".join(traceback.format_exception(exc))
        keep_cause_traceback(exc)
        carry_causes(exc)
        try:
            blob = pickle.dumps(exc)
            pickle.loads(blob)
        except Exception:
            blob = None
        _exit_as_an_interpreter(failed=True)
        _flush_standard_streams()
        try:
            conn.send(("error", (type(exc).__name__, blob, text)))
        except Exception:
            pass
    finally:
        _flush_standard_streams()  # (after an error that came while sending the answer)
        try:
            conn.close()
        finally:
            os._exit(status)


def _output_by_whole_lines() -> None:
    """Make this kernel's stdout and stderr line-buffered (a `print()` of a
    line is one write), where they are text files that are not: every
    kernel writes to the same file or pipe (`> out.txt`, `| reader`).
    Unbuffered (PYTHONUNBUFFERED=1, as most containers' images set it, or
    `python -u`), a kernel wrote each piece a `print()` writes at once, the
    text and its newline apart, and the other kernels' lines went in
    between (`sink(print)` on two kernels into a file: ~16,000 of 20,000
    lines torn). Block-buffered, a full buffer's write may end anywhere in
    a line too. One write of a line up to PIPE_BUF (4 KiB) is whole in a
    pipe, and in a file where the kernels share its offset (Linux moves it
    under a lock). Lines still come out as they are printed. The
    library's own `print()` step writes a batch's lines in chunks below
    PIPE_BUF: faster, and as whole."""
    line_buffered(sys.stdout)
    line_buffered(sys.stderr)


def _flush_standard_streams() -> None:
    """Write out what `print()` buffered, before the launcher hears this
    kernel's answer: once every kernel has answered (or one has failed),
    it kills those not yet gone, and a kernel leaves by `os._exit`, which
    flushes nothing. Flushed after the answer, a kernel's last lines were
    lost whenever the launcher was quicker than the flush (one blocked on
    a pipe its reader had not emptied: `... | slow-reader`)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing more to write there
            pass
