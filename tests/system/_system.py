"""A coordinator and executors as real processes on loopback, and the CLI
as a user runs it, for the system's tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

SECRET = "system-test-secret"

# On a network-namespace host, the test's status requests go through one
# Python process there (a line in: the status as a JSON line out), instead
# of a `status --json` CLI process (~0.3 s of start-up) per poll.
_ASKER = """\
import asyncio, json, os, sys
from kernel.system import Client

async def ask(address, secret):
    async with Client(address, secret, timeout=10.0) as client:
        return await client.request("status")

host, port, secret = sys.argv[1], int(sys.argv[2]), os.environ["KERNEL_SECRET"].encode()
for _ in sys.stdin:
    print(json.dumps(asyncio.run(ask((host, port), secret))), flush=True)
"""
# Shorter than the defaults (5 s, 1 s), so that losses are seen in ~2 s:
# 5 missed heartbeats either way, as with the defaults.
EXECUTOR_TIMEOUT = 2.0
HEARTBEAT = 0.4


async def served_coordinator(data_dir: Path, then):
    """A coordinator served in this loop (`serve`, no process of its own) on
    a free loopback port with `data_dir` for its data, while
    `then(("127.0.0.1", port))` runs; cancelled after."""
    from kernel.system._coordinator import serve

    ready: asyncio.Future = asyncio.get_running_loop().create_future()
    server = asyncio.ensure_future(serve("127.0.0.1", 0, SECRET.encode(), data_dir, ready=ready.set_result))
    try:
        return await then(("127.0.0.1", await ready))
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)


@asynccontextmanager
async def executor_served_here(system: System, workdir: Path, peers: int = 0,
                               coordinator_options: tuple[str, ...] = (), coordinator_env=None):
    """`system`'s coordinator (`coordinator_options`, `coordinator_env` added
    to its command line and environment) and `peers` executors (one core
    each) started as processes of their own, and an executor (one core,
    `workdir`) served in this loop: yields (that executor, its serving task,
    the peers' processes) once all have registered. After, the task cancelled
    and awaited, the executor closed and the system closed (what the test
    did of these already done again, harmlessly)."""
    from kernel.system._executor import ExecutorDaemon

    executor = ExecutorDaemon((system.host, system.port), SECRET.encode(), 1, workdir, host="127.0.0.1",
                              heartbeat=HEARTBEAT)
    registered = asyncio.Event()
    served = None
    try:
        system.start_coordinator(*coordinator_options, **(coordinator_env or {}))
        started = [system.start_executor(1) for _ in range(peers)]
        served = asyncio.ensure_future(executor.run(ready=lambda _: registered.set()))
        await asyncio.wait_for(registered.wait(), 30)
        for peer in started:
            await asyncio.to_thread(system.executor_id, peer)
        yield executor, served, started
    finally:
        if served is not None:
            served.cancel()
            await asyncio.gather(served, return_exceptions=True)
        await executor.close()
        system.close()


async def bytes_kept(warm_up, measured) -> int:
    """The bytes Python still holds (tracemalloc, after a collection) that
    `await measured()` added, after `await warm_up()` made what is made once
    (first calls): what a coordinator keeps per request, say."""
    import gc
    import tracemalloc

    await warm_up()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await measured()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_base(n: int) -> int:
    """A port p with p..p+n-1 free a moment ago, below Linux's ephemeral
    range (32768 on): `--port-base` gives process i the port p+i, and a
    port in that range beside a free one may be any client socket's by the
    time the process binds it (a Slurm run failed so: "address already in
    use" on p+1)."""
    rng = random.Random()
    while True:
        base = rng.randrange(20_000, 32_000 - n)
        sockets = [socket.socket() for _ in range(n)]
        try:
            for i, s in enumerate(sockets):
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()


def marking_pipeline(tmp_path: Path, text: str) -> tuple[Path, Path]:
    """(marks, pipeline): the folder tmp_path/marks, made, where the job's
    processes leave their marks, and tmp_path/pipeline.py, written from
    `text` with {marks} that folder."""
    marks = tmp_path / "marks"
    marks.mkdir()
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(text.format(marks=str(marks)))
    return marks, pipeline


def _submitted(system, pipeline: Path) -> str:
    done = system.cli("submit", pipeline, "--processes", "2", "--max-restarts", "0")
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[0]


def _working(marks: Path, job: str) -> None:
    wait_until(lambda: len(list(marks.glob(f"{job}.1-*"))) >= 2, what=f"{job}'s processes to work")


def submitted_working(system, pipeline: Path, marks: Path) -> str:
    """`pipeline` submitted on 2 processes, no restart (--max-restarts 0):
    its job's id once both of its processes have left a mark in `marks`
    (JOB.1-*: attempt 1 works)."""
    job = _submitted(system, pipeline)
    _working(marks, job)
    return job


async def submitted_working_here(system, pipeline: Path, marks: Path) -> str:
    """`submitted_working` from a test's loop: the submit, then the wait,
    each in a thread of its own (the loop, serving an executor, goes on)."""
    job = await asyncio.to_thread(_submitted, system, pipeline)
    await asyncio.to_thread(_working, marks, job)
    return job


async def submitted_here(system, pipeline: Path, *options) -> str:
    """The id of the job of `pipeline` submitted with `options`, from a
    test's loop (the submit in a thread of its own: the loop may serve an
    executor); the submit asserted to have succeeded."""
    done = await asyncio.to_thread(system.cli, "submit", pipeline, *options)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[0]


async def submitted_marking_here(system, pipeline: Path, marks: Path, *options) -> str:
    """`submitted_here`, then the wait until its attempt 1 has left its
    mark in `marks` (JOB.1: a `marking_pipeline`'s one process works)."""
    job = await submitted_here(system, pipeline, *options)
    await asyncio.to_thread(wait_until, lambda: (marks / f"{job}.1").exists(), what=f"{job} to work")
    return job


async def working_or_ended_here(system, marks: Path, job: str) -> dict:
    """`job`'s state once its attempt 1 has left its mark in `marks` or
    it has ended, whichever comes first (the caller asserts which)."""

    def working_or_ended() -> dict | None:
        state = system.job(job)
        return state if (marks / f"{job}.1").exists() or state["ended"] is not None else None

    return await asyncio.to_thread(wait_until, working_or_ended, what=f"{job} to work")


def a_logged_job(system, root: Path, lines: int) -> str:
    """The id of a job run to its end (`submit --wait`) whose log is `lines`
    lines of 100 bytes ('line 00000 xxx...', numbered from 0)."""
    pipeline = root / "p.py"
    pipeline.write_text(f"for i in range({lines}):\n    print('line %05d ' % i + 'x' * 88)\n"
                        "from kernel import Dataflow\nflow = Dataflow('p')\n"
                        "flow.from_iterable([1]).print()\n")
    done = system.cli("submit", pipeline, "--wait")
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.split()[0]


def read_as_a_pager(command: subprocess.Popen, pause: float) -> tuple[bytes, str]:
    """(stdout, stderr) of `command`, read as a pager does: a pipe's worth,
    a pause of `pause` s (a user reading the first page), then the rest;
    its exit asserted 0. It is killed, and its pipes closed, whatever came."""
    try:
        first = command.stdout.read1(65536)
        time.sleep(pause)  # (a user reading the first page)
        out = first + command.stdout.read()
        err = command.stderr.read().decode()
        assert command.wait(30) == 0, err
    finally:
        command.kill()
        command.wait()
        command.stdout.close()
        command.stderr.close()
    return out, err


def wait_until(condition, timeout: float = 30.0, what: str = "the condition", every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        time.sleep(every)


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return found


def running(pids: list[int]) -> list[int]:
    """Those of `pids` that run: neither gone nor dead and not yet reaped
    (a zombie, as the children of a stopped parent stay)."""
    alive = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            alive.append(pid)
    return alive


class System:
    """`start_coordinator()`, `start_executor(cores)`, `cli(...)`, `status()`;
    `close()` kills everything it started."""

    def __init__(self, root: Path, secret: str = SECRET, options: list[str] = (), switch=None) -> None:
        self.root = root
        self.options = list(options)  # after the command, for every process (--tls-cert ...)
        # with a network-namespace Switch (tests/kernel/_netns.py): the coordinator
        # and the CLI on host 0, executor n on host n
        self.switch = switch
        self.host = switch.addresses[0] if switch else "127.0.0.1"
        self.port = 7700 if switch else free_port()
        self.env = dict(os.environ, KERNEL_SECRET=secret, KERNEL_COORDINATOR=f"{self.host}:{self.port}")
        self.coordinator: subprocess.Popen | None = None
        self.executors: list[subprocess.Popen] = []
        self._started = 0
        self._asker: subprocess.Popen | None = None

    def _on(self, host: int) -> list[str]:
        return self.switch.exec_prefix(host) if self.switch else []

    def _spawn(self, args: list[str], log: Path, env=None, host: int = 0,
               ignore_sigint: bool = False) -> subprocess.Popen:
        out = open(log, "ab")
        try:
            # an executor as a shell's background job starts it: SIGINT ignored
            # (which its job processes must not inherit)
            setup = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
            return subprocess.Popen([*self._on(host), sys.executable, "-m", "kernel", *args, *self.options],
                                    stdout=out, stderr=out, env=env or self.env, cwd=self.root,
                                    preexec_fn=setup)
        finally:
            out.close()

    @property
    def coordinator_log(self) -> Path:
        return self.root / "coordinator.log"

    def start_coordinator(self, *options: str, **extra_env) -> subprocess.Popen:
        # (the log is appended to: a restarted coordinator's "listening" is the next one;
        # the first's, found at once, let a test ask before the second listened)
        listening = self._listening()
        self.coordinator = self._spawn(["coordinator", "--listen", f"{self.host}:{self.port}",
                                        "--executor-timeout", str(EXECUTOR_TIMEOUT),
                                        "--data", str(self.root / "data"), *options], self.coordinator_log,
                                       env=dict(self.env, **extra_env))
        wait_until(lambda: self._listening() > listening, what="the coordinator to listen")
        return self.coordinator

    def _listening(self) -> int:
        log = self.coordinator_log
        return log.read_text(errors="replace").count("coordinator listening") if log.exists() else 0

    def start_executor(self, cores: int = 2, *options: str) -> subprocess.Popen:
        self._started += 1
        n = self._started
        host = n if self.switch else 0
        address = self.switch.addresses[host] if self.switch else "127.0.0.1"
        proc = self._spawn(["executor", "--cores", str(cores), "--workdir", str(self.root / f"executor{n}"),
                            "--host", address, "--heartbeat", str(HEARTBEAT), *options],
                           self.root / f"executor{n}.log",
                           host=host, ignore_sigint=True)
        self.executors.append(proc)
        return proc

    def executor_id(self, proc: subprocess.Popen) -> str:
        n = self.executors.index(proc) + 1
        path = self.root / f"executor{n}" / "executor.json"
        wait_until(path.exists, what=f"executor {n} to register")
        return json.loads(path.read_text())["id"]

    def cli(self, *args, timeout: float = 60, env=None, options=None) -> subprocess.CompletedProcess:
        options = self.options if options is None else options
        return subprocess.run([*self._on(0), sys.executable, "-m", "kernel", *map(str, args), *options],
                              capture_output=True, text=True, timeout=timeout, env=env or self.env,
                              cwd=self.root)

    def status(self) -> dict:
        """`status --json`'s answer, asked from this process (a CLI process
        per poll would cost ~0.3 s of start-up each; tests run the CLI itself)."""
        if self.switch is not None:  # (the coordinator is on a host of its own: asked from there)
            return self._ask_on_host()
        from kernel.net._relay import TLSFiles

        from kernel.system import Client

        options = dict(zip(self.options[::2], self.options[1::2]))
        tls = TLSFiles(options["--tls-cert"], options["--tls-key"], options.get("--tls-ca")) \
            if "--tls-cert" in options else None

        async def ask():
            # (10 s to connect, not the CLI's 2: a loaded machine's coordinator
            # may take longer to answer, and wait_until bounds the whole wait)
            async with Client((self.host, self.port), self.env["KERNEL_SECRET"].encode(), tls,
                              timeout=10.0) as client:
                return await client.request("status")

        return asyncio.run(ask())

    def _ask_on_host(self) -> dict:
        assert not self.options, "status from a namespace host: not with TLS options"
        if self._asker is None or self._asker.poll() is not None:
            self._asker = subprocess.Popen(
                [*self._on(0), sys.executable, "-c", _ASKER, self.host, str(self.port)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self.env, cwd=self.root)
        self._asker.stdin.write("status\n")
        self._asker.stdin.flush()
        line = self._asker.stdout.readline()
        assert line, "the status asker on host 0 ended (its error is on stderr)"
        return json.loads(line)

    def job(self, job_id: str) -> dict:
        return next(j for j in self.status()["jobs"] if j["id"] == job_id)

    def executors_up(self, n: int) -> None:
        wait_until(lambda: sum(e["state"] == "up" for e in self.status()["executors"]) >= n,
                   what=f"{n} executors up", every=0.1)

    def run_with_coordinator(self, scenario) -> None:
        """Start the coordinator, run the coroutine function `scenario`
        against it in a loop of its own, then close everything started."""
        try:
            self.start_coordinator()
            asyncio.run(scenario())
        finally:
            self.close()

    def close(self) -> None:
        if self._asker is not None:
            self._asker.kill()
            self._asker.wait()
            self._asker.stdin.close()
            self._asker.stdout.close()
        for proc in [self.coordinator, *self.executors]:
            if proc is not None and proc.poll() is None:
                for pid in reversed(descendants(proc.pid)):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                proc.wait()


@contextmanager
def a_system(root: Path, executors: int = 1, cores: int = 1, options: list[str] = ()):
    """A coordinator and `executors` executors of `cores` cores, up (each
    process given `options`: System's); all of it killed after."""
    system = System(root, options=options)
    try:
        system.start_coordinator()
        for _ in range(executors):
            system.start_executor(cores)
        system.executors_up(executors)
        yield system
    finally:
        system.close()
