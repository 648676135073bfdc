"""Session 29's review: what its changes missed.

1. `submit` of a pipeline file whose name is not UTF-8 (`caf\\xe9.py`,
   which `kernel run` runs) ended in a UnicodeEncodeError traceback: the
   name travels as JSON text, and the catalog keeps it as text.
2. A pipeline file too large for one message (MAX_MESSAGE, as its JSON
   text: a latin-1 file's bytes above 0x7f take two bytes there, control
   characters six) was sent all the same: the coordinator closed the
   connection, sent again twice, and the command ended with "Connection
   lost" (and "Future exception was never retrieved"). Since session 29
   accepts files that are not UTF-8, half the size reached it.
3. A blank `--peers` said `peers: '' is not host:port`, the words the
   session's `blank_said` replaced for the other addresses; an empty
   address in the list said the same. A blank or malformed
   KERNEL_COORDINATOR was said to be `--coordinator`'s, which the
   command was not given.
4. A request whose send failed as the connection closed (a message over
   the other side's limit) raised ConnectionLost, and its reply's future,
   failed by the closing connection, logged "Future exception was never
   retrieved" on stderr.
5. SLURM_STEP_ID set at all was taken for a job step's task, whose CPUs
   are SLURM_CPUS_PER_TASK: Slurm's special steps are no task (the batch
   step 4294967291, the extern 4294967292, and the interactive step,
   4294967290, an `salloc` shell under LaunchParameters=use_interactive_step,
   which keeps salloc's environment and uses the job's CPUs on the node;
   slurm.h: ids above SLURM_MAX_NORMAL_STEP_ID, 0xfffffff0, the greatest
   of a step of `srun`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "system"))
from _system import System

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
TINY = b"from kernel import Dataflow\nflow = Dataflow('tiny')\nflow.from_iterable([1]).collect()\n"


# -- 1, 2. what submit cannot send, refused before it is sent --------------------------------------

def test_a_file_name_not_in_utf_8_and_a_file_too_large_for_a_message_are_refused_saying_so(tmp_path):
    from kernel.system._wire import MAX_MESSAGE

    odd = tmp_path / os.fsdecode(b"caf\xe9.py")
    odd.write_bytes(TINY)
    big = tmp_path / "big.py"
    # latin-1: each 0xe9 two bytes of JSON text, each 0x01 six (\u0001): 4 a pair
    line = b"# " + b"\xe9\x01" * 2000 + b"\n"
    big.write_bytes(b"# coding: latin-1\n" + TINY + line * (MAX_MESSAGE // (4 * 4000) + 16))
    compile(big.read_bytes(), "big.py", "exec")  # (a file kernel.run runs)
    assert big.stat().st_size < MAX_MESSAGE // 3
    system = System(tmp_path)
    try:
        system.start_coordinator()
        with ThreadPoolExecutor(2) as pool:
            done = [pool.submit(system.cli, "submit", path, timeout=60) for path in (odd, big)]
            odd_done, big_done = (d.result() for d in done)
        assert system.status()["jobs"] == []
    finally:
        system.close()
    assert (odd_done.returncode, odd_done.stdout, odd_done.stderr) == (
        2, "", "error: the pipeline file's name b'caf\\xe9.py' is not UTF-8, which the system keeps its "
               "names in: rename it to submit it\n")
    assert (big_done.returncode, big_done.stdout) == (2, ""), big_done.stderr
    said = re.fullmatch(rf"error: {re.escape(str(big))}: too large to submit: its {big.stat().st_size} bytes "
                        r"are (\d+) of a request's JSON text, over the (\d+) one message carries\n",
                        big_done.stderr)
    assert said, big_done.stderr
    assert int(said[1]) > int(said[2]) and int(said[2]) < MAX_MESSAGE


# -- 3. blank --peers, and KERNEL_COORDINATOR said as itself ---------------------------------------

def cli(*args, **env):
    env = dict(ENV, KERNEL_SECRET="session-29-review", **env)
    return subprocess.run([sys.executable, "-m", "kernel", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env=env)


def test_blank_peers_an_empty_peer_and_a_bad_kernel_coordinator_are_said_as_what_they_are(tmp_path):
    pipeline = tmp_path / "tiny.py"
    pipeline.write_bytes(TINY)
    calls = {
        "--peers ' '": (("run", pipeline, "--process-id", "0", "--peers", " "), {}),
        "--peers a, ,b": (("run", pipeline, "--process-id", "0", "--peers", "127.0.0.1:1, ,127.0.0.1:2"), {}),
        "KERNEL_COORDINATOR ' '": (("status",), {"KERNEL_COORDINATOR": " "}),
        "KERNEL_COORDINATOR nonsense": (("status",), {"KERNEL_COORDINATOR": "nonsense"}),
        "--coordinator nonsense": (("status", "--coordinator", "nonsense"), {"KERNEL_COORDINATOR": " "}),
    }
    with ThreadPoolExecutor(3) as pool:
        done = {what: pool.submit(cli, *args, **env) for what, (args, env) in calls.items()}
        done = {what: future.result() for what, future in done.items()}
    assert {what: (d.returncode, d.stderr) for what, d in done.items()} == {
        "--peers ' '": (2, "error: --peers: the list of addresses given is blank (' '; HOST:PORT,...)\n"),
        "--peers a, ,b": (2, "error: peers: address 2 of 3 is empty ('127.0.0.1:1, ,127.0.0.1:2')\n"),
        "KERNEL_COORDINATOR ' '": (2, "error: KERNEL_COORDINATOR: the address given is blank "
                                      "(' '; HOST:PORT)\n"),
        "KERNEL_COORDINATOR nonsense": (2, "error: KERNEL_COORDINATOR: 'nonsense' is not host:port\n"),
        "--coordinator nonsense": (2, "error: --coordinator: 'nonsense' is not host:port\n"),
    }


# -- 4. a request lost in its send says nothing more ---------------------------------------------------

SMALL = """\
import asyncio
from kernel.net._links import AuthenticatedServer
from kernel.system._wire import COORDINATOR, PATH, Session

class Small(AuthenticatedServer):  # (a coordinator that takes messages of 4 KiB at most)
    noun, path = "a system connection", PATH

    async def _session(self, ws, peer, meta, address):
        async def handler(op, m):
            return {"op": op}
        await Session(ws, handler, "client").run()

async def main():
    server = Small("127.0.0.1", 0, b"session-29-review-secret", COORDINATOR, max_frame=4096,
                   meta={"role": "coordinator"})
    await server.start()
    print(server.port, flush=True)
    await asyncio.Event().wait()  # (serves till the test kills it)

asyncio.run(main())
"""

ASKER = """\
import asyncio, gc, sys
from kernel.system import Client, ConnectionLost

async def main(port):
    async with Client(("127.0.0.1", port), b"session-29-review-secret") as client:
        print(await client.request("ping", timeout=10))
        try:
            await client.request("ping", timeout=10, pad="a" * (1 << 23))
        except ConnectionLost:
            print("lost")
    gc.collect()

asyncio.run(main(int(sys.argv[1])))
gc.collect()
"""


def test_a_request_whose_connection_closes_in_its_send_leaves_no_unretrieved_future(tmp_path):
    server = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SMALL)], stdout=subprocess.PIPE,
                              text=True, cwd=tmp_path, env=ENV)
    try:
        port = int(server.stdout.readline())
        done = subprocess.run([sys.executable, "-c", ASKER, str(port)], capture_output=True, text=True,
                              timeout=30, cwd=tmp_path, env=ENV)
    finally:
        server.kill()
        server.communicate()
    assert (done.returncode, done.stdout, done.stderr) == (0, "{'op': 'ping'}\nlost\n", "")


# -- 5. Slurm's special steps are no task ----------------------------------------------------------

def test_slurms_special_steps_have_the_jobs_cpus_on_the_node_as_a_batch_script_has():
    from kernel.execution._cores import slurm_cpus

    job = {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "1", "SLURM_CPUS_ON_NODE": "4"}
    got = {step: slurm_cpus(dict(job, SLURM_STEP_ID=step))
           for step in ("0", "12", "4294967280", "4294967281", "4294967290", "4294967291", "4294967292",
                        "batch", "extern", " 3 ", "-1", "")}
    node, task = (4, "SLURM_CPUS_ON_NODE"), (1, "SLURM_CPUS_PER_TASK")
    assert got == {"0": task, "12": task, "4294967280": task, " 3 ": task,
                   "4294967281": node, "4294967290": node, "4294967291": node, "4294967292": node,
                   "batch": node, "extern": node, "-1": node, "": node}
