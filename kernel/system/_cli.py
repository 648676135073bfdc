"""`python -m kernel coordinator|executor|submit|status|logs|kill ...`.

Exit status: 0 done (`submit --wait`: the job completed); 1 the job failed
or was killed (`submit --wait`), the coordinator refused the request, could
not be reached, or refused us (a wrong secret; `executor` too, at once);
2 bad usage (a malformed
address, no secret, a missing file); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from functools import partial

# Light modules only, here and in what the command line is checked with: the
# links, the client and the event loop (aiohttp, asyncio: ~0.4 s of CPU) are
# imported where a command uses them, so that a usage error and --help cost
# about what Python's own start-up does (tests/system/test_session42_cli_start_up.py).
from kernel.cli._said import blank_said
from kernel.scheduling._errors import KernelError
from kernel.system._limits import LARGEST_INTEGER

COORDINATOR_VARIABLE = "KERNEL_COORDINATOR"
COMMANDS = ("coordinator", "executor", "submit", "status", "logs", "kill")


class _Usage(Exception):
    pass


def _address(text: str | None, what: str) -> tuple[str, int]:
    from kernel.execution._cluster_options import parse_peers

    if not text.strip():  # (given empty or blank: an unset --coordinator is said before, with what to set)
        raise _Usage(blank_said(what, "address", text, "HOST:PORT"))
    try:
        (address,) = parse_peers(text)
    except ValueError as exc:
        raise _Usage(f"{what}: {str(exc).removeprefix('peers: ')}") from None
    return address


def _page_address(text: str) -> tuple[str, int]:
    """--dashboard's HOST:PORT, read as a job's is (`kernel.run --dashboard`):
    port 0 too, the system's pick, which the coordinator logs as it listens."""
    from kernel.scheduling._host_port import parse_address  # (not the dashboard server's module: asyncio)

    if not text.strip():
        raise _Usage(blank_said("--dashboard", "address", text, "HOST:PORT"))
    try:  # (stripped as --listen's is, and --dashboard's was: ' 127.0.0.1:8080' failed, 'unknown host')
        return parse_address(text.strip())
    except ValueError as exc:
        raise _Usage(str(exc)) from None


def _secret(args) -> bytes:
    from kernel.execution._cluster_options import read_secret

    try:
        return read_secret(None, args.secret_file)
    except ValueError as exc:
        if "needs a shared secret" in str(exc):
            raise _Usage("the system needs a shared secret: set KERNEL_SECRET or use --secret-file") from None
        raise _Usage(str(exc)) from None


def _tls(args) -> tuple[str, str, str | None] | None:
    """The TLS files given (cert, key, ca), checked; `_tls_files` makes them the links' TLSFiles."""
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_ca is not None:
            raise _Usage("--tls-ca needs --tls-cert and --tls-key")
        return None
    if (args.tls_cert is None) != (args.tls_key is None):
        raise _Usage("--tls-cert and --tls-key go together")
    for path in (args.tls_cert, args.tls_key, args.tls_ca):
        if path is not None and not os.path.isfile(path):
            raise _Usage(f"TLS file not found: {path}")
    _tls_loads(args.tls_cert, args.tls_key, args.tls_ca)
    return args.tls_cert, args.tls_key, args.tls_ca


def _tls_loads(cert: str, key: str, ca: str | None) -> None:
    """A usage error where the files are no certificate and key (or CA) that
    ssl loads: read where a command dialled or listened, a coordinator's and a
    client's ended in an ssl.SSLError's traceback, and an executor retried
    "cannot reach the coordinator: [SSL] PEM lib" every 0.5 s for ever. An
    encrypted key whose passphrase KERNEL_TLS_KEY_PASSPHRASE does not give
    is one too: asked for on the terminal, here and at every load after."""
    import ssl  # (not the links: ~0.01 s)

    from kernel.net._tls_keys import EncryptedKey, load_key_pair

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for flags, load, files in (("--tls-cert and --tls-key", partial(load_key_pair, context), (cert, key)),
                               ("--tls-ca", context.load_verify_locations, (ca,))):
        if None in files:
            continue
        try:
            load(*files)
        except EncryptedKey as exc:
            raise _Usage(f"--tls-key: {exc}") from None
        except (ssl.SSLError, OSError) as exc:
            why = exc.strerror or exc
            raise _Usage(f"{flags}: {', '.join(files)} cannot be loaded as PEM ({why})") from None


def _tls_files(tls: tuple[str, str, str | None] | None):
    """`_tls`'s paths as the links' TLSFiles: made where a command dials or
    listens, as kernel.net._relay imports the links (aiohttp, ~0.3 s): made in
    `_tls`, every usage error said after it (`--coordinator x` with
    --tls-cert/--tls-key given) paid that again."""
    if tls is None:
        return None
    from kernel.net._relay import TLSFiles

    return TLSFiles(*tls)


def _executor_ids(text: str) -> list[str]:
    """`--executors ID,...`: the ids, spaces around them dropped; an empty one is a usage error."""
    ids = [part.strip() for part in text.split(",")]
    if not all(ids):
        raise _Usage(f"--executors: an empty executor id in {text!r} (ID,...: executor ids as `status` "
                     "lists them)")
    return ids


def _at_least(least: int):
    """An argparse type: an integer >= `least` (`--cores 0` was sent, and
    refused by the coordinator with exit 1, or by an executor's register,
    retried for ever)."""
    def number(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"must be an integer >= {least}, got {text!r}")
        if value > LARGEST_INTEGER:
            # (the catalog holds no more: an executor's --cores 100000000000000000000
            # registered, its every write a traceback in the coordinator's log)
            raise argparse.ArgumentTypeError(f"must be an integer from {least} to {LARGEST_INTEGER}, "
                                             f"got {text!r}")
        return value

    return number


def _common(parser: argparse.ArgumentParser, coordinator: bool = True) -> None:
    if coordinator:
        # (None: not given; "" given empty, which is said so, not "use --coordinator")
        parser.add_argument("--coordinator", default=None,
                            metavar="HOST:PORT",
                            help=f"the coordinator (default: the {COORDINATOR_VARIABLE} variable)")
    parser.add_argument("--secret-file", default=None,
                        help="file holding the shared secret (default: the KERNEL_SECRET variable)")
    parser.add_argument("--tls-cert", default=None, help="this process's certificate (PEM): turns TLS on")
    parser.add_argument("--tls-key", default=None, help="the certificate's private key (PEM)")
    parser.add_argument("--tls-ca", default=None, help="CA that signs the other side's certificate")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kernel", description="streamkernel: run pipelines, "
                                     "or a system of a coordinator and executors that jobs are submitted to")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="run a pipeline file (python -m kernel run --help)", add_help=False)
    p = commands.add_parser("coordinator", help="hold the catalog and place jobs")
    p.add_argument("--listen", required=True, metavar="HOST:PORT")
    p.add_argument("--data", default="kernel-coordinator", metavar="DIR",
                   help="where the catalog (SQLite) is kept (default: ./kernel-coordinator)")
    p.add_argument("--executor-timeout", type=float, default=5.0, metavar="S",
                   help="an executor silent this long is lost, and its jobs restart (default 5)")
    p.add_argument("--dashboard", default=None, metavar="HOST:PORT",
                   help="serve the system's dashboard (executors, jobs, topics) there")
    p.add_argument("--catalog-timeout", type=float, default=10.0, metavar="S",
                   help="a request that must write the catalog waits this long for a lock another program "
                        "holds on it (sqlite3, a backup), then fails saying who holds it (default 10)")
    _common(p, coordinator=False)
    p = commands.add_parser("executor", help="run job processes on this machine")
    p.add_argument("--cores", type=_at_least(1), required=True, metavar="N",
                   help="cores this executor offers")
    p.add_argument("--workdir", default="kernel-executor", metavar="DIR",
                   help="pipelines, logs and job directories (default: ./kernel-executor)")
    p.add_argument("--host", default=None, metavar="NAME",
                   help="the name or address other machines reach this one by (default: the host name)")
    p.add_argument("--dashboard-host", default="127.0.0.1", metavar="HOST",
                   help="each job process serves its dashboard on a free port of this address "
                        "(default 127.0.0.1); the system's dashboard links to it")
    p.add_argument("--no-dashboard", action="store_true", help="job processes serve no dashboard")
    p.add_argument("--heartbeat", type=float, default=1.0, metavar="S",
                   help="seconds between heartbeats; a coordinator that leaves 5 unanswered is dialled "
                        "again (default 1)")
    _common(p)
    p = commands.add_parser("submit", help="submit a pipeline file as a job; prints the job id first")
    p.add_argument("pipeline", metavar="FILE[:NAME]")
    p.add_argument("--processes", type=_at_least(1), default=None, metavar="M",
                   help="processes, one per executor")
    p.add_argument("--cores", type=_at_least(1), default=1, metavar="N", help="kernels per process")
    p.add_argument("--executors", default=None, metavar="ID,...", help="run on these executors")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="snapshots, on the executors' machines (restarts resume from them)")
    p.add_argument("--shared-state-dir", action="store_true",
                   help="the --state-dir is one directory every executor's machine sees (a network file "
                        "system): a job of several processes may then restart on fewer")
    p.add_argument("--epoch-interval", type=float, default=None, metavar="S",
                   help="with --state-dir: seconds between epoch snapshots")
    p.add_argument("--max-restarts", type=_at_least(0), default=3, metavar="K")
    p.add_argument("--wait", action="store_true", help="follow the job: exit 0 if it completed, else 1")
    _common(p)
    p = commands.add_parser("status", help="executors, jobs and topics")
    p.add_argument("--json", action="store_true")
    _common(p)
    p = commands.add_parser("logs", help="a job's output")
    p.add_argument("job")
    p.add_argument("--follow", "-f", action="store_true", help="until the job ends")
    _common(p)
    p = commands.add_parser("kill", help="stop a job and free its cores")
    p.add_argument("job")
    _common(p)
    return parser


def _configure_logging() -> None:
    from kernel._logging import LIBRARY_HANDLER

    logging.getLogger("kernel").removeHandler(LIBRARY_HANDLER)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    if None in (sys.stdin, sys.stdout, sys.stderr):
        # (a stream the shell closed, `status >&-`: Python left sys.stdout None,
        # and the flush below ended every command with an AttributeError's
        # traceback, exit 1; opened on /dev/null, as `run` does)
        from kernel.cli._run import _standard_streams_open

        _standard_streams_open()
    try:
        try:
            code = _main(argv)
        except SystemExit:  # argparse's --help and usage errors
            sys.stdout.flush()
            raise
        # What print() left in stdout's buffer (a pipe's, block-buffered) goes
        # now, where a reader gone away is caught below: flushed at exit, it
        # ended 'Exception ignored ... BrokenPipeError', exit 120.
        sys.stdout.flush()
        return code
    except BrokenPipeError as exc:
        from kernel.cli._run import _broken_pipe

        if not _broken_pipe(exc):  # (a socket's, not stdout's)
            raise
        # the reader of stdout went away (`status | head -1`): quiet, as `run` and `yes | head -1`
        try:
            sys.stdout = open(os.devnull, "w")  # (what is left to flush at exit goes nowhere)
        except OSError:
            pass
        return 141


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "run":
        from kernel._logging import LIBRARY_HANDLER
        from kernel.cli._run import main as run_main

        # as `python -m kernel.run`: the kernel's warnings go to stderr
        logging.getLogger("kernel").removeHandler(LIBRARY_HANDLER)
        return run_main(argv[1:], prog="python -m kernel run")
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        checked = _checked(args)
        import asyncio  # (here: a usage error, said above, does without the event loop's modules)

        return asyncio.run(_command(args, checked))
    except _Usage as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KernelError as exc:  # the coordinator's --dashboard port taken, say
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


async def _stopped_by_sigterm_too(work) -> int:
    """Await a daemon's `work` (0). SIGTERM, what Kubernetes, Slurm and
    systemd send to stop a service, stops it as Ctrl-C does (its cleanup
    runs: `work` is cancelled) and ends it with "terminated", 143."""
    import asyncio  # (not at the module's top: see there)

    terminated = asyncio.Event()
    main = asyncio.current_task()
    assert main is not None

    def terminate() -> None:
        terminated.set()
        main.cancel()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, terminate)
    try:
        await work
    except asyncio.CancelledError:
        if not terminated.is_set():
            raise  # Ctrl-C: "interrupted", 130
        print("terminated", file=sys.stderr)
        return 143
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    return 0


class _Checked:
    """What `_checked` read of the command line, for `_command`."""

    def __init__(self, started: float, secret: bytes, tls, address: tuple[str, int],
                 dashboard: tuple[str, int] | None = None, payload: dict | None = None) -> None:
        self.started, self.secret, self.tls, self.address = started, secret, tls, address
        self.dashboard, self.payload = dashboard, payload


def _checked(args) -> _Checked:
    """The command line's usage errors (_Usage, exit 2), found before the
    event loop starts and before the links and the client (aiohttp) are
    imported: a mistyped command costs Python's start-up, not theirs."""
    started = time.monotonic()  # (a submit's or a kill's wait is bounded from here: REQUEST_TIMEOUT)
    secret, tls = _secret(args), _tls(args)
    if args.command == "coordinator":
        listen = _address(args.listen, "--listen")
        if not args.executor_timeout > 0:
            raise _Usage("--executor-timeout must be a positive number of seconds")
        if not args.catalog_timeout > 0:
            raise _Usage("--catalog-timeout must be a positive number of seconds")
        dashboard = None if args.dashboard is None else _page_address(args.dashboard)
        return _Checked(started, secret, tls, listen, dashboard=dashboard)
    given_by = "--coordinator"  # (what a blank or malformed address is said to be: the one the user set)
    if args.coordinator is None:
        args.coordinator, given_by = os.environ.get(COORDINATOR_VARIABLE), COORDINATOR_VARIABLE
    elif not args.coordinator.strip():
        raise _Usage(blank_said("--coordinator", "address", args.coordinator, "HOST:PORT"))
    if not args.coordinator:  # (as a missing secret: what to set)
        raise _Usage(f"no coordinator given: set {COORDINATOR_VARIABLE} or use --coordinator HOST:PORT")
    address = _address(args.coordinator, given_by)
    if args.command == "executor":
        if args.cores < 1:
            raise _Usage("--cores must be at least 1")
        if not args.heartbeat > 0:
            raise _Usage("--heartbeat must be a positive number of seconds")
        if args.host is not None and not args.host.strip():  # (not the host name: it was given)
            raise _Usage(blank_said("--host", "name", args.host, "NAME",
                                    "; leave --host out for the host name"))
        if not args.no_dashboard and not args.dashboard_host.strip():
            # (taken, each job's processes were given `--dashboard :PORT`, and failed on it)
            raise _Usage(blank_said("--dashboard-host", "address", args.dashboard_host, "HOST",
                                    "; --no-dashboard for no dashboard"))
    payload = None
    if args.command == "submit":  # (its usage errors before the coordinator is dialled)
        # (the pipeline file's checks, the run's: kernel.cli._run; not the client's module,
        # whose asyncio and aiohttp cost a usage error ~0.3 s of CPU)
        from kernel.cli._run import UsageError
        from kernel.system._pipeline_file import submit_payload

        if args.executors is not None:
            # ("e1, e2" read as "e1" and " e2", and "e1," as "e1" and "": refused by
            # the coordinator, exit 1, as `no such executor:  e2`, its name blank;
            # an empty --executors "" was taken as none given)
            args.executors = ",".join(_executor_ids(args.executors))

        try:
            payload = submit_payload(args.pipeline, state_dir=args.state_dir,
                                     epoch_interval=args.epoch_interval, shared_state=args.shared_state_dir)
        except UsageError as exc:
            raise _Usage(str(exc)) from None
    return _Checked(started, secret, tls, address, payload=payload)


async def _command(args, checked: _Checked) -> int:
    secret, address, started = checked.secret, checked.address, checked.started
    tls = _tls_files(checked.tls)
    if args.command == "coordinator":
        from kernel.system._coordinator import DashboardHoldsTheListenPort, serve

        _configure_logging()
        host, port = address
        # (SIGTERM: its catalog's queued writes done and closed, its
        # connections closed; its default, dying at once, was a SIGKILL)
        try:
            return await _stopped_by_sigterm_too(serve(
                host, port, secret, args.data, tls=tls, executor_timeout=args.executor_timeout,
                adopt_grace=args.executor_timeout, dashboard=checked.dashboard,
                catalog_timeout=args.catalog_timeout))
        except DashboardHoldsTheListenPort:  # two options of this command line that clash: a usage error
            both = f"--listen {args.listen.strip()} and --dashboard {args.dashboard.strip()}"
            raise _Usage(f"{both} ask for the same port ({port}): give the dashboard another "
                         "(HOST:0: the system picks one)") from None
    if args.command == "executor":
        from kernel.system._executor import ExecutorDaemon

        _configure_logging()
        daemon = ExecutorDaemon(address, secret, args.cores, args.workdir, args.host, tls=tls,
                                heartbeat=args.heartbeat,
                                dashboard_host=None if args.no_dashboard else args.dashboard_host)
        # (SIGTERM: its job processes stopped, the coordinator told; its
        # default, dying at once, left the jobs to wait out the lease)
        try:
            return await _stopped_by_sigterm_too(daemon.run())
        finally:
            await daemon.close()
    from kernel.net._links import AuthenticationFailed, LinkError
    from kernel.system import _client
    from kernel.system._wire import KernelSystemError
    from kernel.topics._directory import refused_hint

    payload = checked.payload
    try:
        async with _client.Client(address, secret, tls, started=started) as client:
            if args.command == "submit":
                executors = args.executors.split(",") if args.executors else None
                return await _client.submit(
                    client, args.pipeline, processes=args.processes, cores=args.cores,
                    executors=executors, state_dir=args.state_dir, epoch_interval=args.epoch_interval,
                    max_restarts=args.max_restarts, wait=args.wait, shared_state=args.shared_state_dir,
                    payload=payload)
            if args.command == "status":
                return await _client.status(client, args.json)
            if args.command == "logs":
                return await _client.logs(client, args.job, args.follow)
            return await _client.kill(client, args.job)
    except AuthenticationFailed:
        # (it said "authentication failed with process 0 at http://...": a cluster's words)
        print(f"error: {_client.secret_refused(address)}", file=sys.stderr)
        return 1
    except (LinkError, KernelSystemError, TimeoutError) as exc:
        # str(), not the exception's truth: a bare TimeoutError() printed "error: " and nothing
        print(f"error: {str(exc) or type(exc).__name__}{refused_hint(exc)}", file=sys.stderr)
        return 1
