"""The running system (issue 17): a coordinator and executors as real
processes on loopback, measured from a client in this process.

    python -m benches.system            # full run (about a minute)
    python -m benches.system --quick    # smoke test

1. submit-to-running: a `submit` request until the job's status is
   `running` (the executor has started its `python -m kernel run`
   process), polled every millisecond; and submit-to-completed of a
   10-record job (`submit --wait`'s view: the process's start-up, its
   import of the library, the run, the exit report).
2. restart after a lost executor: an endless one-process job's executor is
   SIGKILLed; the time until the job is `running` again on the other one
   (the executor timeout: a closed connection may be a reset one, its
   executor alive). Then the same with the executor stopped by SIGTERM,
   which stops its job process and tells the coordinator.
3. `status` requests/s: one client sending requests back to back on its
   connection, and 4 clients at once (the catalog holds the jobs above).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECRET = b"bench-secret"
ENDLESS = ("import time\nfrom kernel import Dataflow\nflow = Dataflow('endless')\n"
           "flow.from_iterable(range(10**9)).map(lambda n: time.sleep(0.01) or n).sink(id)\n")
TINY = "from kernel import Dataflow\nflow = Dataflow('tiny')\nflow.from_iterable(range(10)).sink(id)\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.env = dict(os.environ, KERNEL_SECRET=SECRET.decode(),
                        KERNEL_COORDINATOR=f"127.0.0.1:{self.port}")
        self.procs: list[subprocess.Popen] = []
        self.executors: dict[int, subprocess.Popen] = {}
        self.count = 0

    def spawn(self, *args) -> subprocess.Popen:
        with open(self.root / f"{args[0]}-{len(self.procs)}.log", "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "kernel", *args], stdout=log, stderr=log,
                                    env=self.env, cwd=self.root)
        self.procs.append(proc)
        return proc

    def executor(self) -> subprocess.Popen:
        self.count += 1
        workdir = str(self.root / f"executor{self.count}")
        proc = self.executors[self.count] = self.spawn(
            "executor", "--cores", "1", "--host", "127.0.0.1", "--workdir", workdir)
        return proc

    def executor_id(self, n: int) -> str:
        return json.loads((self.root / f"executor{n}" / "executor.json").read_text())["id"]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def _until(client, job: str, condition, every: float = 0.001, timeout: float = 60.0) -> dict:
    deadline = time.perf_counter() + timeout
    while True:
        state = await client.request("job", job=job)
        if condition(state):
            return state
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{job}: {state}")
        await asyncio.sleep(every)


def _payload(name: str, text: str) -> dict:
    import hashlib

    return {"filename": name, "content": text, "digest": hashlib.sha256(text.encode()).hexdigest(),
            "flow": "flow"}


async def measure(system: Processes, runs: int, requests: int) -> dict:
    from kernel.system._client import Client

    results: dict = {}
    async with Client(("127.0.0.1", system.port), SECRET) as client:
        async def executors_up(n):
            while sum(e["state"] == "up" for e in (await client.request("status"))["executors"]) < n:
                await asyncio.sleep(0.05)

        await executors_up(2)
        to_running, to_completed = [], []
        for _ in range(runs):
            start = time.perf_counter()
            job = (await client.request("submit", **_payload("endless.py", ENDLESS)))["job"]
            await _until(client, job, lambda s: s["status"] == "running")
            to_running.append(time.perf_counter() - start)
            await client.request("kill", job=job)
            start = time.perf_counter()
            job = (await client.request("submit", **_payload("tiny.py", TINY)))["job"]
            await _until(client, job, lambda s: s["status"] == "completed", every=0.005)
            to_completed.append(time.perf_counter() - start)
        results["submit_to_running"] = to_running
        results["submit_to_completed"] = to_completed

        for name, sig in (("restart_after_lost_executor", signal.SIGKILL),
                          ("restart_after_stopped_executor", signal.SIGTERM)):
            restarts = []
            for _ in range(runs):
                job = (await client.request("submit", **_payload("endless.py", ENDLESS)))["job"]
                state = await _until(client, job, lambda s: s["status"] == "running")
                (victim,) = state["placement"]
                n = next(n for n in system.executors if system.executor_id(n) == victim)
                gone = system.executors.pop(n)
                gone.send_signal(sig)
                start = time.perf_counter()
                await _until(client, job,
                             lambda s, lost=victim: s["status"] == "running" and s["placement"] != [lost])
                restarts.append(time.perf_counter() - start)
                await client.request("kill", job=job)
                await asyncio.to_thread(gone.wait)
                system.executor()  # a fresh one takes the lost one's place
                await executors_up(2)
            results[name] = restarts

        start = time.perf_counter()
        for _ in range(requests):
            await client.request("status")
        results["status_per_s_1_client"] = requests / (time.perf_counter() - start)

    clients = [Client(("127.0.0.1", system.port), SECRET) for _ in range(4)]
    for c in clients:
        await c.__aenter__()
    try:
        async def hammer(c):
            for _ in range(requests // 4):
                await c.request("status")

        start = time.perf_counter()
        await asyncio.gather(*(hammer(c) for c in clients))
        results["status_per_s_4_clients"] = (requests // 4) * 4 / (time.perf_counter() - start)
        results["jobs_in_catalog"] = len((await clients[0].request("status"))["jobs"])
    finally:
        for c in clients:
            await c.__aexit__()
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller, faster run (smoke test)")
    args = parser.parse_args(argv)
    runs, requests = (2, 200) if args.quick else (10, 4000)
    with tempfile.TemporaryDirectory(prefix="bench-system-") as tmp:
        system = Processes(Path(tmp))
        try:
            system.spawn("coordinator", "--listen", f"127.0.0.1:{system.port}",
                         "--data", str(Path(tmp) / "data"))
            system.executor()
            system.executor()
            results = asyncio.run(measure(system, runs, requests))
        finally:
            system.close()
    print(f"nproc {os.cpu_count()}, {runs} runs, {requests} status requests")
    print("| measure | median | min | max |")
    print("|---|---|---|---|")
    for name in ("submit_to_running", "submit_to_completed", "restart_after_lost_executor",
                 "restart_after_stopped_executor"):
        values = [v * 1000 for v in results[name]]
        print(f"| {name.replace('_', ' ')} | {statistics.median(values):.0f} ms | {min(values):.0f} ms | "
              f"{max(values):.0f} ms |")
    print(f"| status requests/s, 1 client | {results['status_per_s_1_client']:,.0f} | | |")
    print(f"| status requests/s, 4 clients | {results['status_per_s_4_clients']:,.0f} | | |")
    print(f"(catalog: {results['jobs_in_catalog']} jobs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
