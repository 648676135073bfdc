"""Two real cluster processes linked on loopback, and each process tree's
peak memory while they run (tests/kernel/test_session28_cluster_memory.py,
test_session29_fed_from_afar_memory.py).

`run_cluster(build, n)` forks two processes of one kernel each; each runs
`build(n)`'s flow (`(flow, collected)`) with `PROCESS[0]` set to its index
first (the steps a test slows down on one process read it), and process 0
hands back what it collected. The peaks are the sums of each tree's VmHWM
(launcher, kernel, relay), read every few ms till they end: a peak never
falls."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

from _ports import descendants, free_ports, peak_kb

from kernel import run

SECRET = "cluster-memory-test-secret"

# this cluster process's index: set in the forked member, inherited by its kernel
PROCESS = [-1]


class Sampler:
    """Each tree's peak memory in MB, sampled while the `with` lasts."""

    def __init__(self, roots) -> None:
        self.roots = roots  # () -> the pids whose trees are measured
        self.peaks: list[dict[int, int]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.done.is_set():
            roots = self.roots()
            while len(self.peaks) < len(roots):
                self.peaks.append({})
            for i, root in enumerate(roots):
                for pid in descendants(root):
                    kb = peak_kb(pid)
                    if kb is not None:
                        self.peaks[i][pid] = kb
            self.done.wait(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def mb(self) -> list[float]:
        return [sum(p.values()) / 1024 for p in self.peaks]


def _member(build, n: int, index: int, peers: str, out) -> None:
    PROCESS[0] = index
    try:
        flow, collected = build(n)
        run(flow, process_id=index, peers=peers, secret=SECRET, startup_timeout=15.0)
        out.send(("ok", dict(collected.items)))
    except BaseException as exc:
        out.send(("error", type(exc).__name__, str(exc)))
    finally:
        out.close()


def run_cluster(build, n: int, timeout: float = 60.0) -> tuple[dict, list[float]]:
    """`build(n)` on a cluster of two processes of one kernel each:
    process 0's collected records as a dict, and each process tree's peak
    memory in MB."""
    context = multiprocessing.get_context("fork")
    peers = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    children, pipes = [], []
    outcomes = []
    try:
        for i in range(2):
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(target=_member, args=(build, n, i, peers, sender))
            child.start()
            sender.close()
            children.append(child)
            pipes.append(receiver)
        # (sampling from a thread started after the forks: none forks a
        # process with a thread of ours in it; a peak is a high-water mark,
        # so what the members used before the first sample still counts)
        with Sampler(lambda: [child.pid for child in children]) as sampler:
            deadline = time.monotonic() + timeout
            for i, pipe in enumerate(pipes):
                assert pipe.poll(max(0.0, deadline - time.monotonic())), \
                    f"process {i} did not finish within {timeout} s (a hang)"
                outcomes.append(pipe.recv())
    finally:
        for child in children:
            if child.is_alive():
                child.join(5)
            if child.is_alive():
                for pid in reversed(descendants(child.pid)):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                child.join(10)
        for pipe in pipes:
            pipe.close()
    assert outcomes[1] == ("ok", {}), outcomes[1]  # collect() gathers on process 0
    assert outcomes[0][0] == "ok", outcomes[0]
    return outcomes[0][1], sampler.mb()
