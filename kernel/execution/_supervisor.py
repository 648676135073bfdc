"""Supervising kernel processes: the launcher waits on every child's result
pipe and process sentinel at once. A child that raises sends its exception
(pickled) and exits 1; a child that exits or is killed without a result is
reported with its exit code or signal; one stopped (SIGSTOP, a debugger) is
said so and waited for (`_stopped.py`). One that failed: the launcher kills
the other kernels at once and raises `KernelProcessError` naming the kernel and
the cause (the kernel's own exception, an `OperatorError` say, is its
`__cause__`). Ctrl-C in the launcher stops every kernel. With a cluster's
link relay (the last child), a failure is first told to the peers through it.
"""

from __future__ import annotations

import os
import pickle
import signal

from kernel.scheduling._errors import KernelError, restore_causes

from ._launcher_notes import noted
from ._stopped import StoppedWatch

_ABORT_GRACE = 2.0  # seconds a relay gets to tell the peers why this process stops


class KernelProcessError(KernelError):
    """A kernel process failed: raised, exited, or was killed."""

    def __init__(self, kernel: int, cause: str) -> None:
        super().__init__(kernel, cause)
        self.kernel = kernel
        self.cause = cause

    def __str__(self) -> str:
        return f"kernel {self.kernel} {self.cause}"


class RunCancelled(KernelError):
    """The caller cancelled the run (`run_async` was cancelled)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, stopping the run as Ctrl-C does (`python -m kernel.run`'s
    handler raises it): told to a cluster's peers as what it is."""


def _supervise(children, pipes, coordinator=None, relay=None, cancel=None) -> list[dict]:
    """Wait for every kernel's result; the first failure ends everything.
    Epoch messages on the way go to the `coordinator`. With a `relay`
    (`(first kernel, handover pipe)`, the last child), the kernels' results
    are handed to it once all are in, and its result is the run's; a kernel
    that fails, or this launcher itself, is reported to the peers through
    it before it is stopped."""
    exits = [_exit_handle(child) for child in children]
    ended = []  # once the children were stopped (told or not): stopping them again tells nothing new

    def abort(error) -> None:
        if not ended:
            ended.append(error)
            _abort(children, relay, error)

    def kill_all() -> None:
        ended.append(None)
        _kill_all(children)

    try:
        return _wait_for_results(children, pipes, coordinator, relay, cancel, exits, abort, kill_all)
    except KeyboardInterrupt as exc:
        abort("terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted (Ctrl-C)")
        raise
    except Exception as exc:
        # The launcher's own failure (its store of a cluster's epochs: a full
        # disk): told to the peers as a kernel's is. It killed the relay
        # unheard, and they ended with a lost link (code 1006), not the cause.
        abort(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        for handle, child in zip(exits, children):
            if handle != child.sentinel:
                os.close(handle)


def _exit_handle(child):
    """What becomes readable when `child` exits: a pidfd. Not the process
    sentinel, a pipe whose write end the child holds: a process the kernel
    forked (a helper, a fork pool) holds a copy too, and a kernel that
    died was reported only once that process had ended (for ever, for one
    that never does). The sentinel where pidfds are missing (Linux < 5.3)."""
    try:
        return os.pidfd_open(child.pid)
    except (AttributeError, OSError):
        return child.sentinel


def join(child, timeout: float) -> None:
    """`child.join(timeout)`, on its pidfd: Process.join waits on the
    sentinel, which a process the child forked holds too (`_exit_handle`),
    so each join of a killed kernel took its whole timeout."""
    from multiprocessing.connection import wait  # (here: a one-kernel run starts no process)

    handle = _exit_handle(child)
    if handle == child.sentinel:
        child.join(timeout)
        return
    try:
        wait([handle], timeout)
    finally:
        os.close(handle)
    if child.exitcode is not None:  # (reaped by exitcode: join returns at once)
        child.join()


def _wait_for_results(children, pipes, coordinator, relay, cancel, exits, abort, kill_all) -> list[dict]:
    from multiprocessing.connection import wait

    results: list = [None] * len(children)
    pending = set(range(len(children)))
    kernels = len(children) - (relay is not None)
    first = relay[0] if relay is not None else 0
    stopped = StoppedWatch([(f"kernel {first + i}" if i < kernels else "the links process", child.pid,
                             first + i if i < kernels else None) for i, child in enumerate(children)])
    while pending:
        handles = {pipes[i]: i for i in pending}
        handles.update({exits[i]: i for i in pending})
        if cancel is not None:
            handles[cancel] = None
        ready = wait(list(handles), stopped.timeout())
        stopped.look_if_due()
        for handle in ready:
            index = handles[handle]
            if index is None:
                error = RunCancelled("the run was cancelled")
                abort(error)
                raise error
            if index not in pending:
                continue
            # Readable pipe or exited child: either way the pipe now holds the
            # result, an error, or end-of-file (died without a word).
            try:
                if handle is not pipes[index] and not pipes[index].poll(0):
                    # Exited, and nothing (not even end-of-file) in its pipe: a
                    # process it forked (or another run's kernel, forked
                    # meanwhile) holds a copy of the pipe's write end, and
                    # recv() would wait for that process, for ever for a
                    # stream, deaf to cancellation.
                    raise EOFError
                status, payload = pipes[index].recv()
            except EOFError:
                if index == kernels:
                    kill_all()
                    raise KernelError(f"the links process {_death(children[index])}") from None
                _read_epoch_reports(pipes, pending - {index}, coordinator)
                error = KernelProcessError(first + index, _death(children[index]))
                abort(error)
                raise error from None
            except Exception as exc:
                # Its answer does not unpickle here: a step's result() value
                # whose pickle does not rebuild it (the collected records go
                # encoded, `_results.py`). The class's own TypeError came
                # alone, naming no kernel, the other kernels not stopped.
                error = KernelProcessError(
                    first + index, f"handed back results that cannot be unpickled in the caller's process "
                    f"({type(exc).__name__}: {exc}): a step's result() value is rebuilt here from its "
                    "pickle, and pickle.loads(pickle.dumps(value)) fails (an Exception subclass whose "
                    "__init__ takes other arguments than it passes to Exception.__init__, say); give its "
                    "class a __reduce__ that rebuilds it")
                error.__cause__ = exc
                abort(error)
                raise error from exc
            if status == "error":
                if index == kernels:
                    kill_all()
                    raise _relay_error(payload)
                error = _kernel_error(first + index, payload)
                if isinstance(error.__cause__, KeyboardInterrupt):
                    # raised by a function (a kernel ignores SIGINT): a Ctrl-C,
                    # as on one kernel, stopping every kernel as one here does
                    # (`_supervise`); it came back as `kernel 1 failed:
                    # KeyboardInterrupt`, and the CLI exited 1, not 130
                    raise error.__cause__
                abort(error)
                raise error
            if status in ("durable", "finished"):
                coordinator.message(index, (status, payload))
                continue
            if status == "note":
                noted(payload)
                continue
            if status == "restored":  # a cluster's relay: the epoch every process resumes from
                coordinator.restored(*payload)
                continue
            if status == "message":  # a cluster's relay: another process's launcher said
                coordinator.remote(*payload)
                continue
            results[index] = payload
            pending.discard(index)
            if relay is not None and pending == {kernels}:
                try:
                    relay[1].send(("results", {first + k: results[k] for k in range(kernels)}))
                except OSError:  # (gone as they came: its error, or its end, is read next from its pipe)
                    pass
    stopped.end()
    if relay is not None:
        return results[kernels] or []
    return results


def _read_epoch_reports(pipes, others, coordinator) -> None:
    """A kernel died: the epoch reports the others had already sent still
    count (an epoch durable on every kernel is complete whatever happens
    next), so the resumed run restores the newest epoch it can."""
    if coordinator is None:
        return
    for index in sorted(others):
        try:
            while pipes[index].poll(0):
                status, payload = pipes[index].recv()
                if status in ("durable", "finished"):
                    coordinator.message(index, (status, payload))
                elif status == "note":
                    noted(payload)
        except (EOFError, OSError):
            continue


def _abort(children, relay, error) -> None:
    """Stop everything; with a relay, first let it tell the peers why (so
    they report this process's error, not just a lost link)."""
    if relay is None or not children[-1].is_alive():
        _kill_all(children)
        return
    _kill_all(children[:-1])
    # (with where it failed, for the peers' errors: `net.PeerFailed`)
    cause = getattr(error, "__cause__", None)
    kernel = error.kernel if isinstance(error, KernelProcessError) else None
    step = getattr(cause, "operator", None) if isinstance(cause, KernelError) else None
    try:
        relay[1].send(("abort", (str(error), kernel, step if isinstance(step, str) else None)))
        join(children[-1], _ABORT_GRACE)
    except OSError:
        pass
    _kill_all(children)


def _kill_all(children) -> None:
    for child in children:
        if child.is_alive():
            child.kill()


def _death(child) -> str:
    join(child, 5)
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
        else:
            restore_causes(cause)
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


