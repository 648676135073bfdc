"""Running several `python -m kernel.run` processes of one cluster to their
end; their output less the kernels' stall reports."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys

# A kernel's stall report, as the command line prints it (Python's
# last-resort handler: the message alone) or through a handler of the
# pipeline's (`prefix`: its format's text before the message).
_STALL_REPORT = re.compile(
    r"\[kernel \d+\] stall: .+ ran [\d.]+ ms without yielding \(threshold [\d.]+ ms\); "
    r"the event loop and every other operator waited( \(\d+ more stalls since the last report\))?")


def without_stall_reports(text: str, prefix: str = "") -> str:
    """`text` (a run's stderr, or whatever its logging writes to) without
    the lines that report a kernel's stall (an activation that ran over the
    25 ms threshold), each after `prefix`. On a loaded machine any activation
    may be preempted that long, and the report is then the kernel's due:
    a test of what else a run prints leaves them out, and only them."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not (line.startswith(prefix)
                           and _STALL_REPORT.fullmatch(line[len(prefix):].rstrip("\n"))))


# A traceback's line of carets under the code it shows (`~~~~~~~~^^^`):
# Python 3.13 draws them under more lines than 3.11 and 3.12 did.
_CARETS = re.compile(r" *[~^]+ *")


def without_carets(text: str) -> str:
    """`text` without the lines that only underline code in a traceback."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not _CARETS.fullmatch(line.rstrip("\n")))


def run_cli_processes(arguments: list[list[str]], envs: list[dict], timeout: float = 60):
    """Start `python -m kernel.run *arguments[k]` with `envs[k]` for each k,
    all at once, and wait for every one; none outlives the call.
    Returns `(return codes, [(stdout, stderr), ...])`."""
    procs = [subprocess.Popen([sys.executable, "-m", "kernel.run", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for args, env in zip(arguments, envs, strict=True)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], outs


def run_logged_processes(root, arguments: list[list[str]], env: dict, timeout: float = 60) -> list[int]:
    """Start `python -m kernel.run *arguments[k]` with `env` for each k, one
    after another, its stdout to nothing and its stderr to root/p{k}.err,
    then wait for each in turn (`timeout` s each); none outlives the call.
    Returns their exit codes."""
    procs = []
    try:
        for process, args in enumerate(arguments):
            with open(root / f"p{process}.err", "w") as err:
                procs.append(subprocess.Popen([sys.executable, "-m", "kernel.run", *args],
                                              stdout=subprocess.DEVNULL, stderr=err, env=env))
        return [p.wait(timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def started_piped(argv: list[str], env: dict, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """`argv` started with `env` (and `pass_fds`), its stdout and stderr
    piped: what `communicate` gives back once it ends."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, pass_fds=pass_fds)


@contextlib.contextmanager
def processes_reaped(lent: socket.socket):
    """A list for the processes a test starts in the block, `lent` a socket
    handed on to them: as the block ends, whatever happened, `lent` is
    closed here and every process in the list killed and waited for."""
    procs: list[subprocess.Popen] = []
    try:
        yield procs
    finally:
        lent.close()
        for p in procs:
            p.kill()
            p.wait()
