"""The lines a job writes on an executor as it leaves (SIGTERM: its job
processes stopped, their `interrupted` and last words written, then "left"
and its exit) reach a follower that asks for them after it has gone: the
coordinator fetched the rest of each followed log as the executor said
"left" (`kernel.system._logs.LeftLogs`). They were unreachable: a
`logs --follow` of a job killed meanwhile ended on what it had before
(a CI failure of test_session41_logs_leaving_review, when its follower's
last ask came before the last words and its next after the exit).

The follower here asks before the leave and not again until the executor
has exited: the CLI's held in writing to a pipe the test does not read, or
the test's own requests on a connection it holds (the coordinator keeps
the tails that its open connections read, from their places).

Real processes: a coordinator, executors, the CLI."""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import sys
import termios
from contextlib import asynccontextmanager

from _system import SECRET, System, a_system, wait_until

from kernel.system._logs import KEEP_MOST_PER_LOG
from tests.system.test_session41_readme_logs import followed_running

F_GETPIPE_SZ = 1032  # (fcntl: the bytes a pipe holds, 64 KiB by default)

# (200 kB at its start, more than a pipe holds: a follower printing to a
# pipe nobody reads is held there; its last words as its process ends,
# deaf to a second Ctrl-C)
PIPELINE = """\
import atexit, itertools, signal, time
from kernel import Dataflow

atexit.register(lambda: (signal.signal(signal.SIGINT, signal.SIG_IGN), print("last words", flush=True)))
print(("x" * 99 + "\\n") * 2000 + "ready", flush=True)
flow = Dataflow()
flow.from_iterable(itertools.count()).map(lambda x: time.sleep(0.01) or x).sink(lambda x: None)
"""

# (as it ends, more than the coordinator keeps of a log: 5 MiB of 100-byte lines)
LONG_GOODBYE = """\
import atexit, itertools, signal, sys, time
from kernel import Dataflow

atexit.register(lambda: (signal.signal(signal.SIGINT, signal.SIG_IGN),
                         sys.stdout.write("".join("bye %05d %s\\n" % (i, "y" * 90) for i in range(52429))),
                         sys.stdout.flush()))
print("ready", flush=True)
flow = Dataflow()
flow.from_iterable(itertools.count()).map(lambda x: time.sleep(0.01) or x).sink(lambda x: None)
"""


@asynccontextmanager
async def _a_system_here(root, executors: int = 1):
    """`a_system` from a test's loop: its status asked on a thread."""
    system = System(root)
    try:
        system.start_coordinator()
        for _ in range(executors):
            system.start_executor(1)
        await asyncio.to_thread(system.executors_up, executors)
        yield system
    finally:
        system.close()


@asynccontextmanager
async def _connected(system):
    """A client connection to `system`'s coordinator, as a follower holds one."""
    from kernel.system import Client

    async with Client((system.host, system.port), SECRET.encode(), timeout=10.0) as client:
        yield client


async def _ready(system, client, tmp_path, text: str) -> tuple[str, str, int]:
    """A job of `text` submitted and running, its log followed on `client`
    until it says `ready` (its last words set): (the job, the executor it
    runs on, the offset there of the log's end then, the last one asked)."""
    pipeline = tmp_path / "leaving.py"
    pipeline.write_text(text)
    job = (await asyncio.to_thread(system.cli, "submit", pipeline)).stdout.splitlines()[0]
    state = await asyncio.to_thread(wait_until, lambda: (lambda j: j["status"] == "running" and j)(
        system.job(job)), what="the job to run")
    executor, offset, said = state["placement"][0], 0, ""
    async with asyncio.timeout(30):
        while True:
            reply = await client.request("logs", job=job, offsets={executor: offset})
            assert reply["unreachable"] == []
            chunk = reply["chunks"][executor]
            if "\nready\n" in said and chunk["offset"] == offset:
                return job, executor, offset
            if chunk["offset"] == offset:
                await asyncio.sleep(0.05)
            said, offset = said + chunk["text"], chunk["offset"]


def _stopped(system, executor: str):
    """The executor `executor` stopped (SIGTERM), and exited: it has left."""
    proc = next(p for p in system.executors if system.executor_id(p) == executor)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM  # ("terminated", once it has said "left")


def _log_file(tmp_path, system, executor: str, job: str) -> bytes:
    n = next(i for i, p in enumerate(system.executors, 1) if system.executor_id(p) == executor)
    return (tmp_path / f"executor{n}" / "logs" / f"{job}.log").read_bytes()


def test_logs_follow_held_while_its_executor_leaves_and_its_job_is_killed_prints_its_last_lines(tmp_path):
    with a_system(tmp_path) as system:
        with followed_running(system, tmp_path, PIPELINE) as (job, follower):
            out = follower.stdout.fileno()
            size = fcntl.fcntl(out, F_GETPIPE_SZ)

            def unread() -> int:
                return int.from_bytes(fcntl.ioctl(out, termios.FIONREAD, b"\0\0\0\0"), sys.byteorder)

            # (its last ask made: it waits to print what that brought)
            wait_until(lambda: unread() >= size, what="the follower to be held, its pipe full")
            os.kill(system.executors[0].pid, signal.SIGTERM)
            wait_until(lambda: any(e["state"] == "leaving" for e in system.status()["executors"]),
                       what="the executor to leave", every=0.02)
            assert system.cli("kill", job).returncode == 0
            # (it has left: its logs are gone with it)
            assert system.executors[0].wait(timeout=30) == 128 + signal.SIGTERM
            followed, _ = follower.communicate(timeout=60)
            assert follower.returncode == 0
    log = (tmp_path / "executor1" / "logs" / f"{job}.log").read_text()
    assert log.splitlines()[-2:] == ["interrupted", "last words"], log[-300:]
    assert followed.splitlines()[-2:] == ["interrupted", "last words"], followed[-300:]
    # (nothing left out on the way: what the follower printed after the header, less
    # what its readline() took in, `communicate` reading the pipe itself, ends the log)
    assert len(followed) > 150_000 and log.endswith(followed)


async def test_a_job_moved_off_a_leaving_executor_keeps_what_its_attempt_wrote_there(tmp_path):
    async with _a_system_here(tmp_path, executors=2) as system:
        async with _connected(system) as client:
            job, first, offset = await _ready(system, client, tmp_path, PIPELINE)
            await asyncio.to_thread(_stopped, system, first)
            # (placed again on the other one, no state_dir: from its start, attempt 2)
            moved = await asyncio.to_thread(
                wait_until, lambda: (lambda j: j["status"] == "running" and j["attempt"] == 2 and j)(
                    system.job(job)), what="the job to run again elsewhere")
            (second,) = moved["placement"]
            assert second != first
            after = await client.request("logs", job=job, offsets={first: offset})
            assert after["unreachable"] == [], after["unreachable"]
            text = after["chunks"][first]["text"]
            assert text.splitlines()[-2:] == ["interrupted", "last words"], text[-300:]
            log = _log_file(tmp_path, system, first, job)
            assert text.encode() == log[offset:]
            assert after["chunks"][first]["offset"] == len(log)
            # at its end: nothing more, and nothing unreachable
            offsets = {e: chunk["offset"] for e, chunk in after["chunks"].items()}
            end = await client.request("logs", job=job, offsets=offsets)
            assert (end["chunks"][first]["text"], end["unreachable"]) == ("", [])
            # a reader from further back than any connected one was (a `logs` begun
            # after the leave): told it unreachable, not given the tail as the whole
            async with _connected(system) as other:
                assert (await other.request("logs", job=job, offsets={}))["unreachable"] == [first]


async def test_the_tail_kept_of_a_left_executors_log_is_bounded_and_says_it_was_cut(tmp_path):
    async with _a_system_here(tmp_path) as system:
        async with _connected(system) as client:
            job, executor, start = await _ready(system, client, tmp_path, LONG_GOODBYE)
            await asyncio.to_thread(_stopped, system, executor)
            log = _log_file(tmp_path, system, executor, job)
            assert len(log) - start > KEEP_MOST_PER_LOG + (1 << 20)
            got, offset = [], start
            while True:
                reply = await client.request("logs", job=job, offsets={executor: offset})
                chunk = reply["chunks"].get(executor)
                if chunk is None or not chunk["text"]:
                    break
                got.append(chunk["text"])
                offset = chunk["offset"]
    # all it kept, from the follower's place, in order, then unreachable: the
    # rest is on the executor's disk only. (4 MiB, unless the fetch's 1 s ran
    # out first, on a machine so loaded: ~0.35 s here beside a CPU burner)
    kept = "".join(got).encode()
    assert reply["unreachable"] == [executor]
    assert 0 < len(kept) <= KEEP_MOST_PER_LOG and kept == log[start:start + len(kept)]
