"""Shared fixtures: a check that a multi-core run leaves nothing behind;
and the library compiled to bytecode once, before any test runs."""

from __future__ import annotations

import compileall
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import pytest

SHM_DIR = "/dev/shm"
ROOT = Path(__file__).resolve().parent.parent

# pytest rewrites every test module's asserts when it imports it, and caches
# the result in `__pycache__` only where bytecode may be written: with
# PYTHONDONTWRITEBYTECODE set (as on the machines here) each worker rewrote
# all of them on every run, ~9 of the ~12 s of CPU a worker spent
# collecting. This module is imported before any test module.
sys.dont_write_bytecode = False


def pytest_configure(config):
    """The tests start hundreds of Python processes (`python -m kernel.run`,
    the system's CLI, clusters), each importing most of the library. Where
    PYTHONDONTWRITEBYTECODE is set (as on the machines here) none of them
    caches its bytecode, so each compiled every module again: ~0.15 s of CPU
    a process. Compiled once here, they read `__pycache__` (git ignores it;
    py_compile writes whatever that variable says, and compiles nothing that
    is up to date)."""
    for folder in ("kernel", "net", "operators", "state", "aliases", "benches"):
        compileall.compile_dir(ROOT / folder, quiet=1)
    # A background job of a non-interactive shell (`pytest ... &` in a
    # script) starts with SIGINT ignored, and every process a test starts
    # would inherit that across exec: the Ctrl-C tests then wait out their
    # timeouts. A handled SIGINT is reset to the default across exec.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 192 KiB filesystem (tmpfs; CI runs as root), for full disks."""
    import subprocess
    import uuid

    mount = tmp_path / f"tiny-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def shm_names() -> set[str]:
    return set(os.listdir(SHM_DIR))


def child_pids(parent: int | None = None) -> set[int]:
    """Live (or unreaped) processes whose parent is `parent` (default: us).

    Read from the parent's own `task/*/children` (one file a thread; a
    zombie stays listed until reaped, and the children of a thread that
    ended are listed under the thread they pass to): `no_leaks` asks twice
    a test, and the scan of every process's status below took ~18 ms a
    call beside other helpers' ~120 processes. The scan stays for a kernel
    without those files."""
    parent = os.getpid() if parent is None else parent
    try:
        threads = os.listdir(f"/proc/{parent}/task")
        if os.path.exists(f"/proc/{parent}/task/{threads[0]}/children"):
            return _listed_children(parent, threads)
    except (OSError, IndexError):  # the parent is gone: nothing is its child
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                for line in status:
                    if line.startswith("PPid:"):
                        if int(line.split()[1]) == parent:
                            found.add(int(entry))
                        break
        except OSError:  # exited while we looked
            continue
    return found


def _listed_children(parent: int, threads: list[str]) -> set[int]:
    found = set()
    for thread in threads:
        try:
            with open(f"/proc/{parent}/task/{thread}/children") as children:
                found.update(int(pid) for pid in children.read().split())
        except OSError:  # the thread ended while we looked (its children pass to another)
            continue
    return found


def pid_alive(pid: int) -> bool:
    """True while `pid` exists, zombie or not (a reaped process is gone from /proc)."""
    return os.path.exists(f"/proc/{pid}")


@pytest.fixture
def no_leaks():
    """Fails the test if it left shared-memory segments or child processes.

    Segments are counted when their name carries this process's pid: the
    launcher names its rings `kernel-<parent pid>-<token>`, and other
    programs on the machine may come and go in /dev/shm meanwhile.
    """
    me = os.getpid()
    shm_before = shm_names()
    children_before = child_pids(me)
    yield
    active = multiprocessing.active_children()  # also reaps finished ones
    assert active == [], f"multiprocessing children still alive: {active}"
    leftover = child_pids(me) - children_before
    assert not leftover, f"child processes left behind: {sorted(leftover)}"
    new_segments = {n for n in shm_names() - shm_before if f"-{me}-" in n}
    assert not new_segments, f"shared memory left in {SHM_DIR}: {sorted(new_segments)}"


@pytest.fixture
def metered_runtime():
    """`metered_runtime(flow)`: the Runtime of `flow` run to its end on one
    kernel with metrics on, for its instances' counts and fusion."""
    import asyncio

    from kernel.runtime._runtime import Runtime
    from kernel.scheduling._kernel import Kernel

    def run_metered(flow):
        async def run_it():
            kernel = Kernel()
            runtime = Runtime(flow.graph, kernel, metrics=True)
            kernel.at_start(runtime.start)
            await kernel.join()
            return runtime

        return asyncio.run(run_it())

    return run_metered


@pytest.fixture
def seconds_to_clean_up_beside_a_stuck_client():
    """`await seconds(runner)`: once an aiohttp `runner`'s server is waiting
    for a client that never reads (a connection's write buffer past the
    transport's high-water mark, within 10 s), how long its `cleanup()`
    takes."""
    import asyncio

    async def seconds(runner) -> float:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10

        def waiting_for_room() -> bool:
            return any(h.transport is not None and h.transport.get_write_buffer_size() > 1 << 16
                       for h in runner.server.connections)

        while not waiting_for_room():
            assert loop.time() < deadline, "the answer never filled the socket"
            await asyncio.sleep(0.02)
        started = loop.time()
        await asyncio.wait_for(runner.cleanup(), 20)
        return loop.time() - started

    return seconds


@pytest.fixture(scope="session")
def rising_watermarks():
    """`rising_watermarks(script)`: a script of polls (lists of ("batch",
    ...) and ("watermark", step) items) with each watermark the running sum
    of the steps so far, as a float: watermarks that only move forward.
    (Session-scoped: hypothesis tests take it.)"""
    def rising(script: list) -> list:
        watermark, steps = 0, []
        for poll in script:
            steps.append([])
            for kind, value in poll:
                if kind == "watermark":
                    watermark += value
                    value = float(watermark)
                steps[-1].append((kind, value))
        return steps

    return rising


class _ThreadBesideAKernel:
    """A thread that sleeps 10 ms ten times (0.1 s when it gets the GIL as
    it asks; 2-3 s before kernel/scheduling/_handover.py) and a one-kernel
    flow that keeps its loop busy until the thread is done, or `deadline`."""

    TICKS = 10
    IN_TIME = 1.0  # seconds the ticks may take: ten times 0.1 s, for a loaded machine

    def __init__(self, deadline: float = 4.0) -> None:
        import threading

        self.done = threading.Event()
        self.took: list[float] = []
        self.deadline = deadline

    def busy_flow(self, from_async: bool = False):
        """`from_async`: the records come from an async generator
        (`from_async_iterable`), whose reader runs on the loop between
        slices, rather than from a generator read inside them."""
        import time

        from kernel import Dataflow

        give_up = time.monotonic() + self.deadline
        done = self.done

        def until_done():
            n = 0
            while not done.is_set() and time.monotonic() < give_up:
                n += 1
                yield n

        async def until_done_async():
            for n in until_done():
                yield n

        flow = Dataflow("busy")
        records = (flow.from_async_iterable(until_done_async()) if from_async
                   else flow.from_iterable(until_done()))
        records.map(lambda n: n * 3).filter(lambda n: n % 7).sink(lambda n: None)
        return flow

    def ticks(self) -> None:
        import time

        started = time.monotonic()
        try:
            for _ in range(self.TICKS):
                time.sleep(0.01)
            self.took.append(time.monotonic() - started)
        finally:
            self.done.set()

    def check(self) -> None:
        assert self.took and self.took[0] < self.IN_TIME, (
            f"{self.TICKS} sleeps of 10 ms took {self.took} s beside a busy kernel")


@pytest.fixture
def thread_beside_a_kernel():
    """A `_ThreadBesideAKernel`: `.busy_flow()`, `.ticks` (the thread's
    work), `.done`, `.check()`."""
    return _ThreadBesideAKernel()
