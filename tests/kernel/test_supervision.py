"""Supervising kernel processes: a kernel that raises, exits or is killed, at
start-up, mid-run or at shutdown, ends the run at once with a
`KernelProcessError` naming it; nothing survives (processes, /dev/shm).
Ctrl-C and the CLI with `--cores N`, run as a user would, in a subprocess."""

from __future__ import annotations

import contextlib
import logging
import mmap
import multiprocessing
import os
import queue
import select
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import kernel._faults
import kernel.execution._stopped
from kernel import Dataflow, KernelError, Operator, OperatorError, Source, run
from kernel.execution._supervisor import KernelProcessError

REPO = Path(__file__).resolve().parents[2]
PROMPTLY = 10.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")


def shm_names() -> set[str]:
    return set(os.listdir("/dev/shm"))


def pid_alive(pid: int) -> bool:
    """True while `pid` exists, zombie or not (a reaped process leaves /proc)."""
    return os.path.exists(f"/proc/{pid}")


# -- a registry of kernel pids in shared memory -----------------------------------


class Pids:
    """Each kernel writes its pid here (an anonymous MAP_SHARED mapping that
    forked kernels inherit), so the test can check they are all gone."""

    SLOTS = 8

    def __init__(self):
        self.map = mmap.mmap(-1, 8 * self.SLOTS)

    def record(self, index: int) -> None:
        struct.pack_into("<q", self.map, 8 * index, os.getpid())

    def all(self) -> list[int]:
        return [pid for pid in struct.unpack_from(f"<{self.SLOTS}q", self.map) if pid]

    def close(self) -> None:
        self.map.close()


@pytest.fixture
def pids():
    registry = Pids()
    yield registry
    registry.close()


def assert_all_gone(pid_list):
    alive = [pid for pid in pid_list if pid_alive(pid)]
    assert not alive, f"kernel processes still alive: {alive}"


# -- operators that die on purpose -------------------------------------------------


class Forever(Source):
    """Every kernel emits ints forever."""

    def __init__(self, pids: Pids):
        self.pids = pids

    def open(self, context):
        self.pids.record(context.index)
        self.n = context.index

    def poll(self):
        peers = self.context.peers
        self.emit(list(range(self.n, self.n + 100 * peers, peers)))
        self.n += 100 * peers
        return True


def die(how: str, where: str, index: int) -> None:
    if how == "raise":
        raise ValueError(f"boom in {where} on kernel {index}")
    if how == "exit":
        os._exit(3)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "interrupt":
        raise KeyboardInterrupt
    raise AssertionError(how)


class Dier(Operator):
    """Dies (`how`) on kernel `victim` in `phase`: open, on_batch (after
    `after` records), or on_end."""

    def __init__(self, victim: int, phase: str, how: str, after: int = 1000):
        self.victim, self.phase, self.how, self.after = victim, phase, how, after

    def open(self, context):
        self.seen = 0
        self.sources: set[int] = set()  # kernels whose records reached us
        if self.phase == "open" and context.index == self.victim:
            die(self.how, "open", context.index)

    def on_batch(self, port, batch):
        self.seen += len(batch)
        # Kernel i's source emits the ints congruent to i: a mid-run death
        # waits until every kernel is up and has sent something here (on a
        # loaded machine the victim's own records could otherwise suffice).
        peers = self.context.peers
        self.sources.update(x % peers for _, x in batch)
        if (self.phase == "batch" and self.context.index == self.victim and self.seen >= self.after
                and len(self.sources) == peers):
            die(self.how, "on_batch", self.context.index)

    def on_end(self):
        if self.phase == "end" and self.context.index == self.victim:
            die(self.how, "on_end", self.context.index)
        self.emit([("seen", self.context.index, self.seen)])


def dying_flow(pids: Pids, victim: int, phase: str, how: str) -> Dataflow:
    flow = Dataflow("dying")
    if phase == "end":
        # A bounded input: on_end runs once it is over.
        class Bounded(Forever):
            def poll(self):
                super().poll()
                return self.n < 5000

        source = flow.source(lambda: Bounded(pids), name="bounded")
    else:
        source = flow.source(lambda: Forever(pids), name="forever")
    source.key_by(lambda x: x % 17).apply(lambda: Dier(victim, phase, how), name="dier").collect()
    return flow


def run_expecting_failure(flow, cores) -> tuple[KernelProcessError, float]:
    started = time.monotonic()
    with pytest.raises(KernelProcessError) as info:
        run(flow, cores=cores)
    return info.value, time.monotonic() - started


PHASES = ["open", "batch", "end"]
HANDLERS = {"open": "Dier.open", "batch": "Dier.on_batch", "end": "Dier.on_end"}


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize(("cores", "victim"), [(2, 1), (2, 0), (3, 2)])
def test_a_kernel_that_raises(pids, phase, cores, victim):
    err, elapsed = run_expecting_failure(dying_flow(pids, victim, phase, "raise"), cores)
    assert elapsed < PROMPTLY
    assert err.kernel == victim
    where = {"open": "open", "batch": "on_batch", "end": "on_end"}[phase]
    cause = err.__cause__
    assert isinstance(cause, OperatorError)
    assert cause.operator == "dier (step 2)"
    assert cause.function.endswith(HANDLERS[phase])
    assert cause.error == f"ValueError: boom in {where} on kernel {victim}"
    assert str(err) == f"kernel {victim} failed: OperatorError: {cause}"
    # The user's traceback travelled with it, as text.
    assert 'raise ValueError(f"boom in {where} on kernel {index}")' in cause.cause_traceback_text
    assert "Traceback" in err.remote_traceback
    assert_all_gone(pids.all())


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize(("cores", "victim"), [(2, 1), (3, 0)])
def test_a_kernel_that_exits(pids, phase, cores, victim):
    err, elapsed = run_expecting_failure(dying_flow(pids, victim, phase, "exit"), cores)
    assert elapsed < PROMPTLY
    assert err.kernel == victim
    assert str(err) == f"kernel {victim} exited with status 3 before finishing"
    assert err.__cause__ is None
    assert_all_gone(pids.all())


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize(("cores", "victim"), [(2, 1), (3, 1)])
def test_a_kernel_that_is_sigkilled(pids, phase, cores, victim):
    err, elapsed = run_expecting_failure(dying_flow(pids, victim, phase, "sigkill"), cores)
    assert elapsed < PROMPTLY
    assert err.kernel == victim
    assert str(err) == f"kernel {victim} was killed by SIGKILL"
    assert err.__cause__ is None
    assert_all_gone(pids.all())


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize(("cores", "victim"), [(2, 1), (3, 0)])
def test_a_keyboard_interrupt_in_a_kernel_stops_every_kernel_as_ctrl_c(pids, phase, cores, victim):
    """A KeyboardInterrupt raised by a kernel's function is a Ctrl-C, as on
    one kernel: the run raises it (it was `KernelProcessError: kernel 1
    failed: KeyboardInterrupt`), and the other kernels, whose sources never
    end, are stopped."""
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(dying_flow(pids, victim, phase, "interrupt"), cores=cores)
    assert time.monotonic() - started < PROMPTLY
    assert_all_gone(pids.all())


def test_every_kernel_has_run_before_a_mid_run_death(pids):
    # The mid-run case really is mid-run: both kernels were up and the
    # victim had handled records when it died.
    err, _ = run_expecting_failure(dying_flow(pids, 1, "batch", "raise"), 2)
    assert len(pids.all()) == 2
    assert len(set(pids.all())) == 2
    assert os.getpid() not in pids.all()
    assert err.kernel == 1


class ReportPid(Operator):
    """Writes its pid to a pipe once it has handled some records."""

    def __init__(self, fd, victim):
        self.fd, self.victim, self.seen = fd, victim, 0

    def on_batch(self, port, batch):
        self.seen += len(batch)
        if self.context.index == self.victim and self.seen >= 2000 and self.fd is not None:
            os.write(self.fd, struct.pack("<q", os.getpid()))
            self.fd = None


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_kernel_killed_from_outside(pids, sig):
    read_fd, write_fd = os.pipe()
    killed_at = []

    def killer():
        ready, _, _ = select.select([read_fd], [], [], 20)
        if ready:
            pid = struct.unpack("<q", os.read(read_fd, 8))[0]
            killed_at.append(time.monotonic())
            os.kill(pid, sig)

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        flow = Dataflow()
        (flow.source(lambda: Forever(pids), name="forever").key_by(lambda x: x % 5)
             .apply(lambda: ReportPid(write_fd, 1), name="report"))
        with pytest.raises(KernelProcessError) as info:
            run(flow, cores=2)
        noticed = time.monotonic()
    finally:
        thread.join(30)
        os.close(read_fd)
        os.close(write_fd)
    assert killed_at, "the kernel never reported its pid"
    assert noticed - killed_at[0] < PROMPTLY
    assert info.value.kernel == 1
    assert str(info.value) == f"kernel 1 was killed by {sig.name}"
    assert_all_gone(pids.all())


@pytest.mark.parametrize("point", ["forked:1", "forked:2", "fork_parent:2"],
                         ids=["first kernel", "second kernel", "in the at-fork hooks"])
def test_a_ctrl_c_while_a_kernel_is_forked_stops_every_kernel(pids, point, monkeypatch):
    """The launcher sends itself SIGINT at a signal point (kernel/_faults.py):
    a kernel forked, not yet in its books (`forked`), or in the launcher's
    at-fork hooks, just after a kernel's fork (`fork_parent`). The caller
    gets its KeyboardInterrupt and no kernel runs on: the one in the window
    was left running, for ever, for a stream; or, raised in an at-fork hook,
    the KeyboardInterrupt was swallowed there and the run went on (a
    watchdog sends a second SIGINT then, so that the test ends)."""
    monkeypatch.setattr(kernel._faults, "_SIGNAL_SPEC", f"{point}:SIGINT")
    monkeypatch.setattr(kernel._faults, "_seen", {})
    flow = Dataflow()
    flow.source(lambda: Forever(pids), name="forever").key_by(lambda x: x % 5).collect()
    returned, watchdog_fired = threading.Event(), []

    def watchdog():
        if not returned.wait(PROMPTLY):
            watchdog_fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watchdog)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run(flow, cores=2)
    finally:
        returned.set()
        thread.join()
    assert not watchdog_fired, "the Ctrl-C was lost: the run went on"
    running = multiprocessing.active_children()
    for child in running:  # (the test's own clean-up: a failure must not leave one spinning)
        child.kill()
        child.join()
    assert running == []
    assert_all_gone(pids.all())


class StopsItself(Operator):
    """On kernel 1, stops its own process (SIGSTOP) in its first batch: the
    activation running then is the one a stall would be blamed on."""

    stopped = False

    def on_batch(self, port, batch):
        if self.context.index == 1 and not self.stopped:
            self.stopped = True
            os.kill(os.getpid(), signal.SIGSTOP)
        self.emit(batch)


class LinesTo(logging.Handler):
    """Each record's message, a line, written to `fd` (kernel processes
    inherit the handler and the pipe: their records come too)."""

    def __init__(self, fd: int) -> None:
        super().__init__(logging.WARNING)
        self.fd = fd

    def emit(self, record):
        os.write(self.fd, (record.getMessage().replace("\n", " ") + "\n").encode())


def test_a_kernel_stopped_by_sigstop_is_said_stopped_waited_for_and_no_stall_is_blamed(monkeypatch):
    """Kernel 1 stops itself mid-activation. The launcher says it is stopped
    (not a stall, not silence) and waits: the test continues it (SIGCONT)
    once told, and the run ends with every record. The kernel's stall
    detector does not blame its operator for the time it was stopped."""
    monkeypatch.setattr(kernel.execution._stopped, "POLL_INTERVAL", 0.1)
    read_fd, write_fd = os.pipe()
    lines: list[str] = []
    continued: list[int] = []

    def watcher():  # reads until every writer is gone (a full pipe would block a kernel's log)
        deadline, partial = time.monotonic() + PROMPTLY, b""
        while True:
            if not continued and not select.select([read_fd], [], [], deadline - time.monotonic())[0]:
                lines.append("(no notice: the test continues the kernels itself)")
                for child in multiprocessing.active_children():
                    os.kill(child.pid, signal.SIGCONT)
                continued.append(0)
                continue
            chunk = os.read(read_fd, 65536)
            if not chunk:
                return
            *complete, partial = (partial + chunk).split(b"\n")
            for line in map(bytes.decode, complete):
                lines.append(line)
                if line.startswith("kernel 1 (pid ") and " is stopped " in line and not continued:
                    continued.append(int(line.split()[3].rstrip(")")))
                    os.kill(continued[0], signal.SIGCONT)

    handler = LinesTo(write_fd)
    logging.getLogger("kernel").addHandler(handler)
    thread = threading.Thread(target=watcher)
    thread.start()
    try:
        flow = Dataflow()
        out = (flow.from_iterable(range(4000), batch_size=100).key_by(lambda x: x % 5)
               .apply(StopsItself, name="stops itself").collect())
        run(flow, cores=2)
    finally:
        logging.getLogger("kernel").removeHandler(handler)
        os.close(write_fd)
        thread.join(PROMPTLY)
        os.close(read_fd)
    assert sorted(x for _, x in out.items) == list(range(4000))  # waited for, not killed
    pid = continued[0]
    stopped = f"kernel 1 (pid {pid}) is stopped (SIGSTOP or a debugger; kill -CONT {pid} resumes it)"
    assert f"{stopped}: the run waits for it" in lines, lines
    assert any(line.startswith(f"kernel 1 (pid {pid}) continues, stopped for ") for line in lines), lines
    assert not [line for line in lines if "stall:" in line and "stops itself" in line], lines


def test_a_stop_is_said_once_seen_at_two_looks_in_a_row_and_so_is_its_end(monkeypatch, caplog):
    """The watch's looks, with the states given: a stop seen at one look only
    (a debugger's brief attach) is not said; a traced process is said held
    by a debugger; a process that continues is said to; at the end of the
    run, one still said stopped had continued."""
    from kernel.execution._stopped import POLL_INTERVAL, StoppedWatch

    states: dict[int, str] = {}
    monkeypatch.setattr(kernel.execution._stopped, "process_state", states.get)
    now = [0.0]
    watch = StoppedWatch([("kernel 0", 10, 0), ("kernel 1", 11, 1), ("the links process", 12, None)],
                         clock=lambda: now[0])

    def look(**changes) -> list[str]:
        states.update({int(pid[1:]): state for pid, state in changes.items()})
        now[0] += POLL_INTERVAL
        caplog.clear()
        watch.look_if_due()
        return [record.getMessage() for record in caplog.records]

    caplog.set_level(logging.WARNING, logger="kernel")
    watch.look_if_due()  # not due yet: nothing read
    assert look(p10="T", p11="S", p12="S") == []
    assert look(p10="R", p11="t") == []  # kernel 0 was stopped at one look only
    assert look() == ["kernel 1 (pid 11) is held by a debugger (traced): the run waits for it"]
    assert caplog.records[0].kernel == 1
    assert look(p12="T") == []
    assert look() == ["the links process (pid 12) is stopped (SIGSTOP or a debugger; kill -CONT 12 "
                      "resumes it): the other processes of the cluster give it up after two missed "
                      "heartbeats"]
    assert look(p11="S") == [f"kernel 1 (pid 11) continues, stopped for {3 * POLL_INTERVAL:.1f} s"]
    assert look() == []
    caplog.clear()
    watch.end()
    assert [record.getMessage() for record in caplog.records] == [
        f"the links process (pid 12) continues, stopped for {3 * POLL_INTERVAL:.1f} s"]


def test_an_error_that_does_not_unpickle_still_names_the_kernel(pids):
    class LocalError(KernelError):  # a local class: pickle cannot find it
        pass

    class Raiser(Operator):
        def on_batch(self, port, batch):
            if self.context.index == 1:
                raise LocalError("local trouble")

    flow = Dataflow()
    flow.source(lambda: Forever(pids), name="forever").apply(Raiser, name="raiser")
    err, elapsed = run_expecting_failure(flow, 2)
    assert elapsed < PROMPTLY
    assert err.kernel == 1
    assert err.__cause__ is None
    assert str(err).startswith("kernel 1 failed: LocalError: ")
    assert "local trouble" in str(err)
    assert "LocalError: local trouble" in err.remote_traceback
    assert_all_gone(pids.all())


def test_a_successful_run_leaves_nothing_behind(pids):
    flow = Dataflow()

    class Bounded(Forever):
        def poll(self):
            super().poll()
            return self.n < 3000

    out = flow.source(lambda: Bounded(pids), name="bounded").key_by(lambda x: x % 3).count().collect()
    run(flow, cores=3)
    assert dict(out.items) == dict(Counter(x % 3 for x in range(3000)))  # kernel k emits k, k + 3, ...
    assert len(pids.all()) == 3
    assert_all_gone(pids.all())


# -- the CLI, in a subprocess -------------------------------------------------------


def cli(*args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "kernel.run", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


def write(tmp_path, name, source) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


INFINITE = """\
import os

from kernel import Dataflow, Operator, Source


def say(line):
    # One small write(2): atomic on a pipe, whichever kernel writes too.
    os.write(1, (line + "\\n").encode())


class Forever(Source):
    def open(self, context):
        self.n = 0
        say(f"pid {context.index} {os.getpid()}")

    def poll(self):
        self.emit(list(range(self.n, self.n + 100)))
        self.n += 100
        return True


class Announce(Operator):
    said = False

    def on_batch(self, port, batch):
        if not self.said:
            self.said = True
            say(f"flowing {self.context.index}")


flow = Dataflow()
flow.source(Forever, name="forever").key_by(lambda x: x % 7).apply(Announce, name="announce")
"""


def read_lines_until(stream, wanted: int, deadline: float) -> list[str]:
    """Lines of `stream` until `wanted` of them arrived (a reader thread, so
    that a silent process cannot hang the test)."""
    lines: queue.Queue = queue.Queue()

    def reader():
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    got = []
    while len(got) < wanted:
        line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        if line is None:
            break
        got.append(line)
    return got


@contextlib.contextmanager
def started_pipeline(path: Path, cores: int = 2):
    """`python -m kernel.run path --cores N` in its own session, once every
    kernel has said its pid and seen records. Yields (process, kernel pids).
    Whatever happens, the whole process group is SIGKILLed on the way out:
    a failing test must not leave spinning kernels behind."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernel.run", str(path), "--cores", str(cores)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    kernel_pids: set[int] = set()
    try:
        lines = read_lines_until(proc.stdout, 2 * cores, time.monotonic() + 30)
        kernel_pids = {int(line.split()[2]) for line in lines if line.startswith("pid ")}
        if len(lines) < 2 * cores:
            pytest.fail(f"the pipeline did not start: {lines}")
        assert sorted(line.split()[0] for line in lines) == ["flowing"] * cores + ["pid"] * cores, lines
        assert len(kernel_pids) == cores and proc.pid not in kernel_pids
        yield proc, kernel_pids
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in kernel_pids:  # in the group already; this is belt and braces
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("whole_group", [False, True, "sigterm"], ids=["parent only", "process group",
                                                                     "SIGTERM to the parent"])
def test_ctrl_c_stops_every_kernel(tmp_path, whole_group):
    path = write(tmp_path, "forever.py", INFINITE)
    shm_before = shm_names()
    with started_pipeline(path) as (proc, kernel_pids):
        started = time.monotonic()
        if whole_group == "sigterm":  # Kubernetes stopping the pod (its PID 1), as Ctrl-C
            os.kill(proc.pid, signal.SIGTERM)
        elif whole_group:
            os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C
        else:
            os.kill(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=PROMPTLY)
        elapsed = time.monotonic() - started
        stderr = proc.stderr.read()
        # The launcher joined its kernels before exiting: they are gone, not orphans.
        assert_all_gone(kernel_pids)
    assert code == (143 if whole_group == "sigterm" else 130), stderr
    assert elapsed < PROMPTLY
    # (Stall notices may come first: two busy kernels on a loaded machine.)
    assert stderr.endswith("terminated\n" if whole_group == "sigterm" else "interrupted\n"), stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert not {n for n in shm_names() - shm_before if f"-{proc.pid}-" in n}


def session_members(session: int) -> list[int]:
    """The live (not zombie) processes of `session`."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as stat:
                    fields = stat.read().rpartition(")")[2].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[3]) == session and fields[0] != "Z":  # (state, ppid, pgrp, session)
                members.append(int(name))
    return members


@pytest.mark.parametrize(("spec", "code", "said"), [
    ("forked:1:SIGINT@group", 130, "interrupted"),  # a terminal's Ctrl-C, a kernel not yet in the books
    ("fork_child:1:SIGINT@group", 130, "interrupted"),  # ... reaching a kernel before its handlers are set
    ("fork_parent:1:SIGINT", 130, "interrupted"),  # in the launcher's at-fork hooks (it was swallowed)
    ("forked:2:SIGTERM", 143, "terminated"),  # held, then handed to the CLI's handler
], ids=["group, launcher in the window", "group, kernel in the window", "at-fork hooks", "SIGTERM"])
def test_cli_ctrl_c_while_the_kernels_are_forked(tmp_path, spec, code, said):
    """Signal points (kernel/_faults.py) send the signal in the instant a
    kernel is forked: the launcher ends as on any Ctrl-C, every kernel
    gone when it exits, and no kernel prints a KeyboardInterrupt of its own."""
    path = write(tmp_path, "forever.py", INFINITE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernel.run", str(path), "--cores", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "KERNEL_SIGNAL_AT": spec},
    )
    try:
        _, stderr = proc.communicate(timeout=30)  # (the run is endless: a lost Ctrl-C times out)
        left = session_members(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert left == [], f"kernel processes outlived their launcher: {left}"
    assert proc.returncode == code, stderr
    assert stderr.endswith(said + "\n"), stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr


def wait_for_exit(pids, timeout: float) -> list[int]:
    """Wait until every pid has exited (a pidfd becomes readable when its
    process ends, parent or not); returns those still running at the timeout."""
    fds = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds[os.pidfd_open(pid)] = pid
    deadline = time.monotonic() + timeout
    try:
        waiting = set(fds)
        while waiting and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select(list(waiting), [], [], left)
            waiting -= set(ready)
        return sorted(fds[fd] for fd in waiting)
    finally:
        for fd in fds:
            os.close(fd)


def test_kernels_do_not_outlive_a_killed_launcher(tmp_path):
    """SIGKILL (or the OOM killer) on the launcher leaves no handler to run:
    the kernels must notice that their parent is gone and stop, or they spin
    on their cores forever as orphans. Nothing of it may stay in /dev/shm
    either: no clean-up of the launcher's runs, so its rings must have been
    unlinked before the kernels were forked (mapped, nameless)."""
    path = write(tmp_path, "forever.py", INFINITE)
    with started_pipeline(path) as (proc, kernel_pids):
        launcher = proc.pid
        os.kill(launcher, signal.SIGKILL)
        proc.wait(timeout=PROMPTLY)
        survivors = wait_for_exit(kernel_pids, 5.0)
        assert survivors == [], "kernels still running 5 s after their launcher died"
    left = sorted(n for n in shm_names() if f"-{launcher}-" in n)
    assert left == [], f"the killed launcher's segments stayed in /dev/shm: {left}"


WORDS = """\
from kernel import Dataflow

lines = ["the cat sat on the mat", "the end", "a cat", "mat mat mat"] * 25

flow = Dataflow()
words = flow.from_iterable(lines, batch_size=3).flat_map(str.split)
words.key_by(lambda w: w).count().print("count ")
words.map(str.upper).filter(lambda w: len(w) > 2).print()
"""


def test_cli_output_on_two_cores_equals_one_core(tmp_path):
    path = write(tmp_path, "words.py", WORDS)
    one, two, three = cli(path, "--cores", "1"), cli(path, "--cores", "2"), cli(path, "--cores", "3")
    for proc in (one, two, three):
        assert proc.returncode == 0, proc.stderr
        assert "error" not in proc.stderr and "Traceback" not in proc.stderr
    lines = Counter(one.stdout.splitlines())
    assert Counter(two.stdout.splitlines()) == lines
    assert Counter(three.stdout.splitlines()) == lines
    assert lines["count ('the', 75)"] == 1
    assert lines["count ('mat', 100)"] == 1
    assert lines["CAT"] == 50
    assert sum(lines.values()) == 7 + 25 * 11


FAILING = """\
from kernel import Dataflow


def invert(x):
    return 100 // (x - 7)


flow = Dataflow()
flow.from_iterable(range(20), batch_size=3).key_by(lambda x: x % 4).map_values(invert).collect()
"""


def test_cli_a_failing_user_function_on_two_cores(tmp_path):
    path = write(tmp_path, "failing.py", FAILING)
    proc = cli(path, "--cores", "2")
    assert proc.returncode == 1
    err = proc.stderr
    assert err.startswith("error: kernel ")
    assert "operator 'map_values(invert) (step 2)'" in err
    assert "function 'invert' raised ZeroDivisionError: integer division or modulo by zero" in err
    assert "on record: (3, 7)" in err
    # The user's traceback, with library frames hidden.
    assert f'File "{path}", line 5, in invert' in err
    assert "return 100 // (x - 7)" in err
    assert "kernel/_" not in err
    assert proc.stdout == ""


def test_cli_missing_flow_name_on_two_cores_is_a_usage_error(tmp_path):
    path = write(tmp_path, "words.py", WORDS)
    proc = cli(f"{path}:nope", "--cores", "2")
    assert proc.returncode == 2
    assert "has no 'nope'" in proc.stderr
    assert "Dataflows defined there: flow" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_missing_file_on_two_cores_is_a_usage_error(tmp_path):
    proc = cli(tmp_path / "nowhere.py", "--cores", "2")
    assert proc.returncode == 2
    assert "pipeline file not found" in proc.stderr


def test_cli_a_file_that_raises_on_import_on_two_cores(tmp_path):
    source = "from kernel import Dataflow\nflow = Dataflow()\nraise RuntimeError('bad file')\n"
    path = write(tmp_path, "broken.py", source)
    proc = cli(path, "--cores", "2")
    assert proc.returncode == 1
    assert "RuntimeError: bad file" in proc.stderr
    assert f'File "{path}", line 3' in proc.stderr


def test_cli_a_kernel_that_exits_on_two_cores(tmp_path):
    path = write(tmp_path, "exits.py", """\
        import os
        from kernel import Dataflow, Operator

        class Exit(Operator):
            def on_batch(self, port, batch):
                if self.context.index == 1:
                    os._exit(3)

        flow = Dataflow()
        flow.from_iterable(range(100)).apply(Exit, name="exit")
        """)
    started = time.monotonic()
    proc = cli(path, "--cores", "2")
    assert time.monotonic() - started < PROMPTLY + 5
    assert proc.returncode == 1
    assert "error: kernel 1 exited with status 3 before finishing" in proc.stderr
