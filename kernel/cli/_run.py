"""`python -m kernel.run pipeline.py[:name]`: run a Dataflow defined in a file.

Exit codes: 0 success; 1 the pipeline failed (a user function raised, or the
file raised while being imported); 2 bad usage (no such file, no such flow);
130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

# (blank_said lives apart, for the system's commands: see _said)
from kernel.cli._said import blank_said

# The command line is checked with these light modules only: the fluent API
# and the run's machinery (kernel._facade, ~0.2 s of CPU) are imported once
# it holds together, so --help and a usage error cost Python's start-up.
from kernel.execution._run_options import (
    DEFAULT_EPOCH_INTERVAL,
    DEFAULT_GC_THRESHOLD,
    DEFAULT_HEARTBEAT,
    DEFAULT_STARTUP_TIMEOUT,
    MIN_HEARTBEAT,
    check_core_count,
    check_epoch_interval,
    check_heartbeat,
    check_seconds,
)
from kernel.execution._supervisor import KernelProcessError, Terminated
from kernel.scheduling._errors import KernelError, describe_exception

if TYPE_CHECKING:
    from kernel.dataflow._api import Dataflow

PIPELINE_MODULE = "__kernel_pipeline__"


class UsageError(Exception):
    """The command line names something that is not there."""


class PipelineImportError(Exception):
    """The pipeline file raised while being imported."""


def syntax_error(exc: SyntaxError | ValueError, path) -> UsageError:
    """The pipeline file `path` is not valid Python (`exc`: what compiling
    it raised): a usage error, said alike by `kernel.run` (at its import)
    and `submit` (which only compiles it): FILE:LINE, Python's message, and
    Python's line and caret; FILE and the message where Python names no
    line (a null byte in the file)."""
    import traceback

    if not isinstance(exc, SyntaxError):  # (a null byte, where compile raises ValueError)
        return UsageError(f"{path}: {exc}")
    if not exc.lineno:  # (none; 0 for an unknown encoding on a coding line)
        return UsageError(f"{path}: {type(exc).__name__}: {exc.msg}")
    where = "".join(traceback.format_exception_only(exc)[:-1]).rstrip()  # File..., the line, the caret
    return UsageError(f"{path}:{exc.lineno}: {type(exc).__name__}: {exc.msg}\n{where}")


def split_target(target: str) -> tuple[Path, str]:
    """`path.py:name` -> (path, name); the name defaults to `flow`."""
    path, sep, name = target.rpartition(":")
    if sep and name.isidentifier() and path:
        return Path(path), name
    return Path(target), "flow"


def _check_pipeline_path(path: Path) -> None:
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as exc:  # (a name too long, a folder this user cannot search: it was Python's traceback)
        raise UsageError(f"cannot read the pipeline file {path}: {exc.strerror or exc}") from None
    if is_dir:
        raise UsageError(f"{path} is a directory: give the pipeline file (a .py file) in it")
    if not is_file:
        raise UsageError(f"pipeline file not found: {path}")


def load_flow(path: Path, name: str) -> Dataflow:
    from kernel._facade import pipeline_import
    from kernel.dataflow._api import Dataflow

    _check_pipeline_path(path)
    spec = importlib.util.spec_from_file_location(PIPELINE_MODULE, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PIPELINE_MODULE] = module
    # Imports next to the pipeline file work, as with `python pipeline.py`.
    sys.path.insert(0, str(path.resolve().parent))
    pipeline_import(path)
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if isinstance(exc, SyntaxError) and (own := _compile_error(path)) is not None:
            raise syntax_error(own, path) from None  # (the file's own: not a module it imports)
        raise PipelineImportError(f"importing {path} raised {describe_exception(exc)}") from exc
    finally:
        pipeline_import(None)
    flow = getattr(module, name, None)
    if flow is None:
        found = sorted(k for k, v in vars(module).items() if isinstance(v, Dataflow))
        hint = f"; Dataflows defined there: {', '.join(found)}" if found else "; it defines no Dataflow"
        raise UsageError(f"{path} has no {name!r}{hint}")
    if not isinstance(flow, Dataflow):
        raise UsageError(f"{path}:{name} is a {type(flow).__name__}, not a Dataflow")
    return flow


def _compile_error(path: Path) -> SyntaxError | ValueError | None:
    """What compiling the pipeline file raises, as its import compiled it
    (its bytes: their coding cookie, BOM, null bytes), named by `path` as
    the user gave it; None if it compiles (a SyntaxError raised at its
    import came from elsewhere: a module it imports, an eval). Its import's
    SyntaxError could not tell: it names the file by its absolute path,
    and no file at all for a null byte."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return source_error(data, path)


def source_error(data: bytes, path) -> SyntaxError | ValueError | None:
    """What compiling a pipeline file's bytes raises, None if they compile:
    Python's own rules for its encoding (a BOM or a coding line, else
    UTF-8), as importing it applies them. `submit` checks a file with this,
    as `kernel.run` does after a SyntaxError at its import."""
    try:
        compile(data, str(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:  # (a null byte: a ValueError in some versions)
        return exc
    return None


def _report(exc: BaseException, kernel: int | None = None, kernel_in_text: bool = True) -> None:
    """A failure's message and traceback; `kernel`: the index of the kernel
    it happened in, where known: a field in JSON, with the failed step's, as
    in the kernels' own records; in text a `kernel N: ` prefix (but for
    `kernel_in_text=False`: a one-kernel run's, which never named it)."""
    # (the pipeline's classes are named as in `python pipeline.py`'s errors,
    # not after the module name the command imports the file under)
    from kernel.dataflow._errors import OperatorError, cause_traceback

    internal = f"{PIPELINE_MODULE}."
    message = str(exc).replace(internal, "")
    step = exc.operator if isinstance(exc, OperatorError) else None
    if kernel is not None and kernel_in_text and not _json_errors:
        message = f"kernel {kernel}: {message}"
    _error(message, cause_traceback(exc).replace(internal, ""), kernel=kernel, step=step)


_json_errors = False  # --log-format json: the command's own error is a JSON line too
_json_job: str | None = None  # its `job` field: `pipeline.py:flow`, once the command line is read


def _error(message: str, traceback: str = "", *, kernel: int | None = None, step: str | None = None) -> None:
    """The command's last word on stderr: `error: ...` and the user's
    traceback, or with --log-format json one JSON object (with the
    `kernel` and `step` fields where known: `_report`)."""
    if _json_errors:
        from kernel._logging import json_line

        print(json_line("ERROR", message, traceback=traceback or None, logger="kernel.run", kernel=kernel,
                        step=step, job=_json_job), file=sys.stderr)
        return
    print(f"error: {message}", file=sys.stderr)
    if traceback:
        print("", file=sys.stderr)
        print(traceback, end="", file=sys.stderr)


_dashboard_said = None  # the handler that prints where the dashboard listens (one, however often main runs)


def _worth_saying(dashboard: str) -> bool:
    """Whether the command prints where the dashboard is: port 0's port is
    the system's to know, and a terminal gets a link; a log file, where an
    executor runs a job with `--dashboard` on a port it picked (and shows
    on the system's page), is left the job's own output. (A malformed
    address is said by the run, before anything runs.)"""
    from kernel.metrics import parse_address

    try:
        return parse_address(dashboard)[1] == 0 or sys.stderr.isatty()
    except ValueError:
        return False


def _say_where_the_dashboard_is() -> None:
    """Once the run's dashboard listens, print where on stderr (the record
    of the logger `kernel.metrics.url`: `dashboard on
    http://127.0.0.1:40123/`), as text or as a JSON line as the command's
    warnings are: the one way to learn a port the system picked
    (`--dashboard 127.0.0.1:0`), and a link to click for any other."""
    import logging

    from kernel._logging import JsonFormatter, off_the_live_line

    global _dashboard_said
    logger = logging.getLogger("kernel.metrics.url")
    if _dashboard_said is not None:
        logger.removeHandler(_dashboard_said)
    _dashboard_said = logging.StreamHandler(sys.stderr)
    text = logging.Formatter("%(message)s")
    _dashboard_said.setFormatter(JsonFormatter(_json_job) if _json_errors else text)
    _dashboard_said.addFilter(off_the_live_line)
    logger.addHandler(_dashboard_said)
    logger.setLevel(logging.INFO)  # (an INFO record: the command prints warnings only, else)
    logger.propagate = False  # printed once, not again by a pipeline's own handler of INFO records


def _check_cluster_options(args) -> None:
    if args.peers is None or args.process_id is None:
        raise UsageError("a cluster needs both --process-id and --peers")
    if not args.peers.strip():  # (it said "peers: '' is not host:port")
        raise UsageError(blank_said("--peers", "list of addresses", args.peers, "HOST:PORT,..."))
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together")
    if args.tls_ca is not None and args.tls_cert is None:
        raise UsageError("--tls-ca needs --tls-cert and --tls-key")


def _flow_loader(path: Path, name: str):
    """`get_flow` for the run plan: the pipeline file imported once per
    process that asks. The launcher imports it only when the plan needs the
    flow (one kernel; a state_dir's or a cluster's fingerprint); each kernel
    process imports it itself, so module-level state (open files, sockets,
    random generators) is its own, not a forked copy of the launcher's."""
    loaded: dict[int, Dataflow] = {}

    def get_flow() -> Dataflow:
        pid = os.getpid()
        if pid not in loaded:
            loaded[pid] = load_flow(path, name)
        return loaded[pid]

    return get_flow


def _progress(args):
    """The live progress line, on a terminal only and unless --quiet."""
    if args.quiet or sys.stdout is None or not sys.stdout.isatty():
        return None
    from ._progress import ProgressLine

    return ProgressLine(sys.stdout)


def _resolve_placement(args) -> None:
    """--slurm / --peers-from-env: the process id and peers from a resource
    manager's environment (kernel/cli/_resource_managers.py)."""
    if not (args.slurm or args.peers_from_env):
        return
    from kernel.cli._resource_managers import ResourceManagerError, from_kubernetes, from_slurm

    if args.slurm and args.peers_from_env:
        raise UsageError("--slurm and --peers-from-env exclude each other")
    if args.peers is not None or args.process_id is not None:
        raise UsageError("--slurm and --peers-from-env take the place of --process-id and --peers")
    try:
        if args.slurm:
            args.process_id, args.peers = from_slurm(os.environ, args.port_base)
        else:
            args.process_id, args.peers = from_kubernetes(os.environ)
    except ResourceManagerError as exc:
        raise UsageError(str(exc)) from None


def _listen_advice(error, args) -> str:
    """For a port this process could not listen on: who holds it and what
    to do (another --port-base, Slurm's reserved ports)."""
    from kernel.net._relay import ListenFailed

    if not isinstance(error, ListenFailed):
        return ""
    from kernel.cli._resource_managers import listen_advice

    reserved = bool(args.slurm and args.port_base is None and os.environ.get("SLURM_STEP_RESV_PORTS"))
    advice = listen_advice(error, args.slurm, reserved)
    return f"\n  {advice}" if advice else ""


def _checked(args, path: Path) -> None:
    """The command line's checks that need nothing the run imports: a usage
    error (UsageError, or ValueError for an option's value as `plan_for`
    says it) is said before the fluent API and the links are imported
    (`--heartbeat 0.01` with `--peers` imported aiohttp first, ~0.4 s)."""
    _resolve_placement(args)
    if args.peers is not None or args.process_id is not None:
        _check_cluster_options(args)
    if args.epoch_interval is not None and args.state_dir is None:
        raise UsageError("--epoch-interval needs --state-dir")  # (epochs drive the snapshots, nothing else)
    _check_pipeline_path(path)
    if args.dashboard is not None and not args.dashboard.strip():  # (said as the system's commands say it)
        raise UsageError(blank_said("--dashboard", "address", args.dashboard, "HOST:PORT"))
    if args.coordinator is not None:
        if not args.coordinator.strip():
            raise UsageError(blank_said("--coordinator", "address", args.coordinator, "HOST:PORT"))
        if ":" not in args.coordinator:
            raise UsageError(f"--coordinator must be HOST:PORT, got {args.coordinator!r}")
    # (the option values plan_for checks again: here in its words, before its imports)
    check_core_count(args.cores)
    if args.heartbeat is not None:  # (KERNEL_HEARTBEAT's is read, and warned of, by plan_for)
        check_heartbeat(args.heartbeat)
    check_seconds("startup_timeout", args.startup_timeout)
    if args.epoch_interval is not None:
        check_epoch_interval(args.epoch_interval)


def _run(args, path: Path, name: str) -> int:
    """The run of a checked command line (`_checked`)."""
    from kernel._facade import _state_dir_held, execute, plan_for

    in_cluster = args.peers is not None or args.process_id is not None
    if args.dashboard is not None and _worth_saying(args.dashboard):
        _say_where_the_dashboard_is()
    if args.coordinator is not None:
        # as KERNEL_COORDINATOR, which the topics read and the kernels inherit
        os.environ["KERNEL_COORDINATOR"] = args.coordinator
    get_flow = _flow_loader(path, name)
    interval = DEFAULT_EPOCH_INTERVAL if args.epoch_interval is None else args.epoch_interval
    tls = None if args.tls_cert is None else (args.tls_cert, args.tls_key, args.tls_ca)
    listen_fd, peers_held = None, False
    if in_cluster:
        from kernel.execution._cluster import inherited_listen_fd, inherited_peers_held

        listen_fd = inherited_listen_fd()  # (a job process's: kernel.system's executor)
        peers_held = inherited_peers_held()
    with _state_dir_held(args.state_dir, args.process_id):  # (before the plan: kernel.run_async says why)
        plan = plan_for(get_flow, cores=args.cores, gc_threshold=DEFAULT_GC_THRESHOLD,
                        state_dir=args.state_dir, epoch_interval=interval,
                        process_id=args.process_id, peers=args.peers, secret_file=args.secret_file, tls=tls,
                        startup_timeout=args.startup_timeout, heartbeat=args.heartbeat,
                        dashboard=args.dashboard, progress=_progress(args), listen_fd=listen_fd,
                        peers_held=peers_held)
        if not in_cluster:
            execute(plan, get_flow)
            return 0
        from kernel.net import LinkError, PeerFailed  # (these import aiohttp: only a cluster pays for it)

        try:
            execute(plan, get_flow)
        except LinkError as exc:  # it names the peer: that is the whole message
            # (a peer's failure with where it failed, the kernel and the step, as the
            # peer's own error has them: on one core a process, the failed kernel's
            # was another process's, and this one's last word had neither)
            # (a peer lost or that never came: its kernel, where it runs one, `LinkError.kernel`)
            where = {"kernel": exc.kernel, "step": exc.step if isinstance(exc, PeerFailed) else None}
            _error(str(exc) + _listen_advice(exc, args), **where)
            return 1
        return 0


_terminated = False  # the run was stopped by SIGTERM (said as "terminated", exit 143)


def _on_sigterm(signum, frame) -> None:
    """SIGTERM (Kubernetes stopping a pod, Slurm's scancel, `kill`) stops
    the run as Ctrl-C does: the kernels are stopped and joined, and the
    process exits 143 saying "terminated". Unhandled, it killed the
    launcher with no word, and as a container's PID 1 (deploy/kubernetes)
    it was ignored outright: the pod waited out its grace period for the
    SIGKILL. Kernel and relay processes, forked with this handler, keep
    SIGTERM's default: they die."""
    if os.getpid() != _cli_pid:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    global _terminated
    _terminated = True
    on_interrupt = signal.getsignal(signal.SIGINT)
    if on_interrupt is signal.default_int_handler:  # (Python's: a KeyboardInterrupt, said as SIGTERM's)
        raise Terminated
    if callable(on_interrupt):  # asyncio's (cancels the run's main task; SIGTERM: a run's page says so)
        on_interrupt(signal.SIGTERM, frame)
    else:  # SIGINT ignored, as in a process started in the background by a shell: stop all the same
        raise Terminated


_cli_pid = 0

def _let_stop_signals_in() -> None:
    """SIGINT and SIGTERM, blocked by whoever started this process until
    it could stop as they ask (an executor), come in now, inside the
    `try` that says "interrupted" or "terminated": one sent meanwhile
    is delivered here. (Unblocked already: nothing changes.)"""
    from kernel.cli._lease import STOP_SIGNALS

    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _standard_streams_open() -> None:
    """A standard stream the shell closed (`<&-`, `>&-`, `2>&-`) is opened on
    /dev/null: else the next descriptor opened (the event loop's) took its
    number, and uvloop aborted the process at its end ("uv__close:
    Assertion `fd > STDERR_FILENO' failed", exit 134). Python leaves
    sys.stdout None for a closed stdout: writes to it go nowhere, as
    print() does then."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:  # (a lower one was closed too, and took it: both are /dev/null now)
                os.dup2(opened, fd)
                os.close(opened)
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))


def _broken_pipe(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it) is a BrokenPipeError (from another
    kernel process: its OperatorError's text, the cause is not carried)
    and this process's stdout is a pipe whose reader went away (`python -m
    kernel.run p.py | head -1`): not a user's socket whose peer did."""
    # (no OperatorError where its module was never imported: the system's
    # commands, which say a closed pipe with this too, do without it)
    errors = sys.modules.get("kernel.dataflow._errors")
    operator_error = errors.OperatorError if errors is not None else ()
    seen, broken = 0, False
    while exc is not None and seen < 16 and not broken:
        broken = isinstance(exc, BrokenPipeError) or (
            isinstance(exc, operator_error) and str(exc.error).startswith("BrokenPipeError"))
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    if not broken:
        return False
    import select

    poller = select.poll()
    poller.register(1, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def main(argv: list[str] | None = None, prog: str = "python -m kernel.run") -> int:
    global _cli_pid, _terminated
    _standard_streams_open()
    if threading.current_thread() is not threading.main_thread():
        return _main(argv, prog)
    _cli_pid, _terminated = os.getpid(), False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv, prog)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None, prog: str) -> int:
    global _json_errors, _json_job
    _json_job = None  # (argparse's errors come before the pipeline is known)
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run the Dataflow named NAME (default: flow) defined in a pipeline file.",
    )
    parser.add_argument("pipeline", metavar="PIPELINE.py[:NAME]")
    parser.add_argument("--cores", type=int, default=1, help="kernels, one pinned process per core")
    parser.add_argument("--state-dir", default=None,
                        help="snapshot every epoch there, and resume from it after a crash")
    parser.add_argument("--epoch-interval", type=float, default=None,
                        help="with --state-dir: seconds between epoch snapshots "
                             f"(default {DEFAULT_EPOCH_INTERVAL})")
    parser.add_argument("--dashboard", default=None, metavar="HOST:PORT",
                        help="serve the run's metrics at http://HOST:PORT/metrics (Prometheus format) "
                             "and its dashboard at http://HOST:PORT/")
    parser.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                        help="where the flow's topics and services are registered and looked up "
                             "(default: the KERNEL_COORDINATOR variable)")
    parser.add_argument("--quiet", action="store_true",
                        help="no live progress line (there is none when stdout is not a terminal)")
    cluster = parser.add_argument_group("cluster (several machines)")
    cluster.add_argument("--process-id", type=int, default=None, metavar="I",
                         help="this process's place in --peers (0-based)")
    cluster.add_argument("--peers", default=None, metavar="HOST:PORT,...",
                         help="every process's address, the same list on each")
    cluster.add_argument("--secret-file", default=None,
                         help="file holding the shared secret (default: the KERNEL_SECRET variable)")
    cluster.add_argument("--startup-timeout", type=float, default=DEFAULT_STARTUP_TIMEOUT,
                         help=f"seconds to wait for every peer (default {DEFAULT_STARTUP_TIMEOUT:g})")
    cluster.add_argument("--heartbeat", type=float, default=None, metavar="S",
                         help="seconds between a link's liveness checks; a peer silent for two of them "
                              f"is lost (default: KERNEL_HEARTBEAT where set, else {DEFAULT_HEARTBEAT:g}; "
                              f"at least {MIN_HEARTBEAT:g})")
    cluster.add_argument("--slurm", action="store_true",
                         help="process id and peers from Slurm (srun): SLURM_PROCID, SLURM_STEP_NODELIST...")
    cluster.add_argument("--port-base", type=int, default=None, metavar="P",
                         help="with --slurm: the first port on each node (default: the ports Slurm "
                              "reserved for the step, SLURM_STEP_RESV_PORTS, else 7000)")
    cluster.add_argument("--peers-from-env", action="store_true",
                         help="process id and peers of a Kubernetes StatefulSet's pod (deploy/kubernetes/)")
    cluster.add_argument("--tls-cert", default=None, help="this process's certificate (PEM): turns TLS on")
    cluster.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")
    cluster.add_argument("--tls-ca", default=None,
                         help="CA that signs every peer's certificate (also required of clients)")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="json: the kernels' warnings (and the command's error) as one JSON object a "
                             "line: time, level, message, kernel, step, job")
    arguments = sys.argv[1:] if argv is None else list(argv)
    if "--log-format=json" in arguments or any(
            a == "--log-format" and b == "json" for a, b in itertools.pairwise(arguments)):
        def usage_error(message: str) -> None:  # argparse's own errors, as a JSON line too
            global _json_errors
            _json_errors = True
            _error(f"{prog}: {message}")
            sys.exit(2)

        parser.error = usage_error
    args = parser.parse_args(argv)
    from kernel.cli._lease import watch_from_environment

    watch_from_environment()  # started by an executor: it ends us when our lease is not renewed
    path, name = split_target(args.pipeline)
    _json_errors = args.log_format == "json"
    _json_job = f"{path.name}:{name}"
    if _json_errors:
        from kernel._logging import use_json_logs

        use_json_logs(sys.stderr, job=_json_job)
    try:
        _checked(args, path)
    except (UsageError, ValueError) as exc:
        _error(str(exc))
        return 2
    from kernel.state import StateError  # the facade's one reach into `state`

    try:
        _let_stop_signals_in()
        return _run(args, path, name)
    except StateError as exc:
        _error(str(exc))
        return 1
    except UsageError as exc:
        _error(str(exc))
        return 2
    except (KernelProcessError, PipelineImportError, KernelError) as exc:
        if not _broken_pipe(exc):
            return _failed(exc, one_kernel=args.cores == 1 and args.peers is None and args.process_id is None)
        # the reader of stdout went away: quiet, as `yes | head -1` (141: SIGPIPE's)
        try:
            sys.stdout = open(os.devnull, "w")  # (what is left to flush at exit goes nowhere)
        except OSError:
            pass
        return 141
    except ValueError as exc:
        _error(str(exc))
        return 2
    except KeyboardInterrupt:
        said = "terminated" if _terminated else "interrupted"
        if _json_errors:  # every last word of the command a JSON line
            from kernel._logging import json_line

            print(json_line("WARNING", said, logger="kernel.run", job=_json_job), file=sys.stderr)
        else:
            print(said, file=sys.stderr)
        return 143 if _terminated else 130
    return 0


def _failed(exc: BaseException, one_kernel: bool) -> int:
    """`one_kernel`: the run was one kernel in this process (kernel 0), whose
    errors come bare, not as a `KernelProcessError` naming the kernel."""
    from kernel.dataflow._errors import OperatorError

    if isinstance(exc, KernelProcessError):
        cause = exc.__cause__
        if isinstance(cause, SystemExit):
            # sys.exit() in the pipeline file (at its import in each kernel
            # process): its code and its message as on one core, where it
            # ends the command as it would `python pipeline.py`
            code = cause.code
            if code is None or isinstance(code, int):
                return code or 0
            print(code, file=sys.stderr)
            return 1
        if isinstance(cause, UsageError):
            _error(str(cause))
            return 2
        if isinstance(cause, (PipelineImportError, KernelError)):
            _report(cause, kernel=exc.kernel)
        else:  # (it exited, was killed: its message names it, "kernel 1 exited with status 3 ...")
            _report(exc, kernel=exc.kernel, kernel_in_text=False)
        return 1
    _report(exc, kernel=0 if one_kernel and isinstance(exc, OperatorError) else None, kernel_in_text=False)
    return 1
