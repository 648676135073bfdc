"""An executor's connection to the coordinator reset (a NAT or load balancer
dropping it, a TCP RST), with the executor and its job processes alive: the
job must never run two attempts at once. The executor dials the coordinator
through a small TCP proxy (a real process) that resets its connections on
request (SO_LINGER 0: RST both ways), and can refuse new ones (the executor
then cannot come back). Each attempt of the job appends the monotonic time
(one clock for every process of the machine) of every record it handles to a
file of its own, so the tests see when each attempt ran."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _system import EXECUTOR_TIMEOUT, System, descendants, running, wait_until

PROXY = """\
import asyncio, socket, struct, sys

target = (sys.argv[1], int(sys.argv[2]))
pairs = set()
armed = False  # lose the executor's next reply to `start` with its connection
for_good = False  # and refuse new connections from then on
server = None
lose_submit_reply = False  # lose the coordinator's reply to a client's next `submit`
reply_lost = False  # (its submit went through: the coordinator's next bytes are its reply)

async def pipe(reader, writer):
    global reply_lost
    try:
        while data := await reader.read(65536):
            if reply_lost:
                reply_lost = False
                reset()
                return
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()

def whole_frame(buffer):
    # (size, payload unmasked) of the websocket frame at the head of buffer, or None: not all here
    if len(buffer) < 2:
        return None
    length, at = buffer[1] & 0x7F, 2
    if length == 126:
        length, at = int.from_bytes(buffer[2:4], "big"), 4
    elif length == 127:
        length, at = int.from_bytes(buffer[2:10], "big"), 10
    mask = buffer[at:at + 4] if buffer[1] & 0x80 else bytes(4)
    at += 4 if buffer[1] & 0x80 else 0
    if len(buffer) < at + length:
        return None
    return at + length, bytes(b ^ mask[i % 4] for i, b in enumerate(buffer[at:at + length]))

async def from_executor(reader, writer):
    # frame by frame (the executor's frames are masked, as a client's): the
    # reply to `start` (it names the pid) is dropped when armed, and both
    # connections reset
    global armed, lose_submit_reply, reply_lost
    buffer, upgraded = b"", False
    try:
        while data := await reader.read(65536):
            buffer += data
            if not upgraded:
                end = buffer.find(b"\\r\\n\\r\\n")
                if end < 0:
                    continue
                writer.write(buffer[:end + 4])
                buffer, upgraded = buffer[end + 4:], True
            while (frame := whole_frame(buffer)) is not None:
                size, payload = frame
                if lose_submit_reply and b'"op":"submit"' in payload:
                    lose_submit_reply, reply_lost = False, True
                if armed and b'"pid"' in payload:
                    armed = False
                    if for_good:
                        server.close()
                    reset()
                    return
                writer.write(buffer[:size])
                buffer = buffer[size:]
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()

async def serve(client_reader, client_writer):
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    pair = (client_writer, upstream_writer)
    pairs.add(pair)
    await asyncio.gather(from_executor(client_reader, upstream_writer), pipe(upstream_reader, client_writer))
    pairs.discard(pair)

def reset():
    for pair in list(pairs):
        for writer in pair:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                       struct.pack("ii", 1, 0))
            writer.transport.abort()
    pairs.clear()

async def commands():
    global armed, for_good, server, lose_submit_reply
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    while line := (await loop.run_in_executor(None, sys.stdin.readline)).strip():
        if line in ("lose-start-reply", "lose-start-reply-for-good"):
            armed, for_good = True, line.endswith("for-good")
        elif line == "lose-submit-reply":
            lose_submit_reply = True
        else:
            if line == "refuse":  # no new connections: the executor cannot come back
                server.close()
            reset()
        print("done", flush=True)

asyncio.run(commands())
"""

TICKING = """\
import os
import time
from kernel import Dataflow

def tick(n):
    with open(os.path.join({ticks!r}, os.environ["KERNEL_RUN"]), "a") as f:
        f.write(f"{{time.monotonic()}}\\n")
    time.sleep(0.01)
    return n

flow = Dataflow("ticking")
flow.from_iterable(range(10**9), batch_size=1).map(tick).sink(id)
"""


class Proxy:
    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PROXY, "127.0.0.1", str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    def command(self, what: str) -> None:
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "done\n"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture
def behind_proxy(tmp_path):
    """A coordinator; executor 1 (3 cores, so a one-core job goes to it)
    dialling it through the proxy, executor 2 (2 cores) directly."""
    system = System(tmp_path)
    proxy = None
    try:
        system.start_coordinator()
        proxy = Proxy(system.port)
        system.start_executor(3, "--coordinator", f"127.0.0.1:{proxy.port}")
        system.start_executor(2)
        system.executors_up(2)
        yield system, proxy
    finally:
        if proxy is not None:
            proxy.close()
        system.close()


def ticks(directory: Path, job: str, attempt: int) -> list[float]:
    try:
        return [float(t) for t in (directory / f"{job}.{attempt}").read_text().split()]
    except FileNotFoundError:
        return []


def submit_ticking(system: System, tmp_path: Path, placed: bool = True,
                   handled: bool = True) -> tuple[str, Path]:
    """The job, its first records handled (if `handled`; on executor 1, if `placed`)."""
    directory = tmp_path / "ticks"
    directory.mkdir()
    pipeline = tmp_path / "ticking.py"
    pipeline.write_text(textwrap.dedent(TICKING.format(ticks=str(directory))))
    job = system.cli("submit", pipeline).stdout.splitlines()[0]
    if handled:
        wait_until(lambda: len(ticks(directory, job, 1)) >= 3, what="the job's first records")
    if placed:
        assert system.job(job)["placement"] == [system.executor_id(system.executors[0])]
    return job, directory


def test_a_reset_connection_the_executor_redials_at_once_keeps_its_job_running_not_restarted(
        behind_proxy, tmp_path):
    # The coordinator took the closed connection for a lost executor and
    # started the job on executor 2 at once, while attempt 1 ran on until
    # executor 1 came back (0.5 s later) and was told to stop it: both
    # attempts ran for ~0.5 s.
    system, proxy = behind_proxy
    job, directory = submit_ticking(system, tmp_path)
    executor = system.executor_id(system.executors[0])
    registered = f"executor {executor} registered"
    proxy.command("reset")
    wait_until(lambda: system.coordinator_log.read_text().count(registered) == 2, timeout=5,
               what="executor 1 to register again")
    handled = len(ticks(directory, job, 1))
    wait_until(lambda: len(ticks(directory, job, 1)) > handled + 3, timeout=5,
               what="attempt 1 to go on after the reconnection")
    state = system.job(job)
    assert (state["status"], state["attempt"], state["restarts"], state["placement"]) == \
        ("running", 1, 0, [executor]), state
    assert not (directory / f"{job}.2").exists()
    assert system.cli("kill", job).returncode == 0


def test_a_reset_connection_the_executor_kept_away_the_next_attempt_starts_after_the_last_one_ended(
        behind_proxy, tmp_path):
    # The same reset, the executor unable to come back: it fences its job
    # process (1.6 s, 0.8 of the executor timeout, without an answer), and
    # the coordinator starts attempt 2 only once executor 1's lease is over
    # (2 s since it was last heard from). It used to start attempt 2 at once.
    system, proxy = behind_proxy
    job, directory = submit_ticking(system, tmp_path)
    executor = system.executor_id(system.executors[0])
    proxy.command("refuse")
    wait_until(lambda: len(ticks(directory, job, 2)) >= 3, timeout=10, what="attempt 2's first records")
    stale = system.executors[0]
    wait_until(lambda: descendants(stale.pid) == [stale.pid], timeout=5, what="executor 1 to fence its job")
    first, second = ticks(directory, job, 1), ticks(directory, job, 2)
    gap = second[0] - first[-1]
    assert gap > 0, f"attempts 1 and 2 ran at once for {-gap:.3f} s"
    log = (system.root / "executor1.log").read_text()
    assert f"no answer from the coordinator for over 1.6 s: stopping 1 job process(es) ({job} attempt 1 " \
           "process 0), which it starts elsewhere after 2 s without a word" in log, log
    state = system.job(job)
    assert (state["status"], state["attempt"], state["restarts"]) == ("running", 2, 1), state
    assert state["message"] == f"lost executor {executor} (its connection closed, and it did not " \
                               f"come back within {EXECUTOR_TIMEOUT:g} s)"
    assert system.cli("kill", job).returncode == 0


def test_a_start_whose_reply_is_lost_the_next_attempt_waits_until_the_executor_has_stopped_it(
        behind_proxy, tmp_path):
    # Executor 1 starts attempt 1, and its connection is reset before its
    # reply reaches the coordinator ("could not start"). The restart must not
    # place attempt 2 until executor 1, back 0.5 s later, has stopped attempt
    # 1 on request: placed at once on executor 2, it ran beside attempt 1.
    system, proxy = behind_proxy
    executor = system.executor_id(system.executors[0])
    proxy.command("lose-start-reply")
    # (attempt 1 may be stopped before its first record: under load it was, at times, still
    # starting when executor 1 came back 0.5 s later and was told to stop it)
    job, directory = submit_ticking(system, tmp_path, placed=False, handled=False)
    wait_until(lambda: len(ticks(directory, job, 2)) >= 3, timeout=30, what="attempt 2's first records")
    first, second = ticks(directory, job, 1), ticks(directory, job, 2)
    gap = second[0] - first[-1] if first else math.inf
    assert gap > 0, f"attempts 1 and 2 ran at once for {-gap:.3f} s"
    state = system.job(job)
    assert (state["status"], state["attempt"], state["restarts"]) == ("running", 2, 1), state
    assert state["message"].startswith("could not start: "), state
    log = system.coordinator_log.read_text()
    assert f"{job}: attempt 1 may still run on executor(s) {executor}: the next attempt waits until each " \
           f"has stopped it, or is lost ({EXECUTOR_TIMEOUT:g} s after it was last heard from)" in log, log
    assert f"{job}: no earlier attempt runs any more" in log
    # attempt 1's core, busy while it was not confirmed stopped, is free again: only attempt 2's is busy
    assert sum(e["free"] for e in system.status()["executors"]) == 3 + 2 - 1
    assert system.cli("kill", job).returncode == 0


@pytest.mark.parametrize("killed", [False, True], ids=["waiting", "killed while waiting"])
def test_the_cores_of_an_attempt_not_confirmed_stopped_stay_busy_until_its_executor_is_lost(tmp_path, killed):
    # Attempt 1's reply to `start` lost, and executor 1 kept away: the job
    # waits for attempt 1 to be confirmed stopped, which runs on executor 1
    # until it fences it. Its core counted free there meanwhile: a job could
    # be placed beside it (executor 1 back, before it had stopped attempt 1).
    # Killed, the job leaves attempt 1 running all the same. Executor 1 lost,
    # its core is free: nothing held for good.
    system = System(tmp_path)
    proxy = None
    try:
        system.start_coordinator("--executor-timeout", "4")  # (time enough to look while the job waits)
        proxy = Proxy(system.port)
        system.start_executor(3, "--coordinator", f"127.0.0.1:{proxy.port}")
        system.start_executor(2)
        system.executors_up(2)
        one, two = (system.executor_id(e) for e in system.executors)
        proxy.command("lose-start-reply-for-good")
        job, _ = submit_ticking(system, tmp_path, placed=False)
        waits = f"{job}: attempt 1 may still run on executor(s) {one}"
        wait_until(lambda: waits in system.coordinator_log.read_text(), timeout=5,
                   what="the job to wait for attempt 1 to stop")

        def free() -> dict[str, int]:
            return {e["id"]: e["free"] for e in system.status()["executors"]}

        assert free() == {one: 3 - 1, two: 2}
        if killed:
            assert system.cli("kill", job).returncode == 0
            assert system.job(job)["status"] == "killed"
            assert free() == {one: 3 - 1, two: 2}
        wait_until(lambda: {e["id"]: e["state"] for e in system.status()["executors"]}[one] == "lost",
                   timeout=10, what="executor 1 to be lost", every=0.1)
        if not killed:
            wait_until(lambda: system.job(job)["status"] == "running", timeout=5, what="attempt 2 to run")
            assert system.job(job)["placement"] == [two]
        assert free() == {one: 3, two: 2 - (0 if killed else 1)}
        assert not running(descendants(system.executors[0].pid)[1:]), "attempt 1 was not fenced"
    finally:
        if proxy is not None:
            proxy.close()
        system.close()


def test_a_coordinator_restarted_while_a_job_waits_for_its_last_attempt_to_stop_waits_on(tmp_path):
    # As above, executor 1 then kept away, and the coordinator SIGKILLed and
    # started again while the job waits: what it waited for died with it,
    # and the new one placed attempt 2 on executor 2 as soon as that
    # registered, beside attempt 1 (executor 1 fences it 2.4 s after its
    # last answer, at this test's 3 s timeout).
    system = System(tmp_path)
    proxy = None
    try:
        system.start_coordinator("--executor-timeout", "3")
        proxy = Proxy(system.port)
        system.start_executor(3, "--coordinator", f"127.0.0.1:{proxy.port}")
        system.start_executor(2)
        system.executors_up(2)
        executor = system.executor_id(system.executors[0])
        # (kept away from the moment its reply is lost: refused only once attempt 1
        # had ticked, it came back first where the job's process was slow to start,
        # and had attempt 1 stopped)
        proxy.command("lose-start-reply-for-good")
        job, directory = submit_ticking(system, tmp_path, placed=False, handled=False)
        wait_until(lambda: "may still run on executor(s)" in system.coordinator_log.read_text(), timeout=5,
                   what="the job to wait for attempt 1 to stop")
        wait_until(lambda: ticks(directory, job, 1), timeout=5, what="attempt 1's first record")
        assert "no earlier attempt runs any more" not in system.coordinator_log.read_text()
        system.coordinator.kill()
        system.coordinator.wait()
        system.start_coordinator("--executor-timeout", "3")
        wait_until(lambda: len(ticks(directory, job, 2)) >= 3, timeout=10, what="attempt 2's first records")
        stale = system.executors[0]
        wait_until(lambda: descendants(stale.pid) == [stale.pid], timeout=5,
                   what="executor 1 to fence its job")
        first, second = ticks(directory, job, 1), ticks(directory, job, 2)
        gap = second[0] - first[-1]
        assert gap > 0, f"attempts 1 and 2 ran at once for {-gap:.3f} s"
        state = system.job(job)
        assert (state["status"], state["attempt"], state["restarts"]) == ("running", 2, 1), state
        assert f"executor {executor} lost: it did not come back to the restarted coordinator" in \
            system.coordinator_log.read_text()
        assert system.cli("kill", job).returncode == 0
    finally:
        if proxy is not None:
            proxy.close()
        system.close()


def test_a_frozen_executor_its_job_process_ends_itself_before_the_next_attempt_starts(tmp_path):
    # SIGSTOP: the executor can neither answer nor fence its process. The
    # process held its lease only through the executor, and ran beside
    # attempt 2 until the executor woke.
    system = System(tmp_path)
    try:
        system.start_coordinator()
        system.start_executor(3)
        system.start_executor(2)
        system.executors_up(2)
        job, directory = submit_ticking(system, tmp_path)
        frozen = system.executors[0]
        frozen.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: len(ticks(directory, job, 2)) >= 3, timeout=10,
                       what="attempt 2's first records")
            first, second = ticks(directory, job, 1), ticks(directory, job, 2)
            assert running(descendants(frozen.pid)) == [frozen.pid]  # (unreaped: a zombie)
        finally:
            frozen.send_signal(signal.SIGCONT)
        gap = second[0] - first[-1]
        assert gap > 0, f"attempts 1 and 2 ran at once for {-gap:.3f} s"
        assert system.cli("kill", job).returncode == 0
    finally:
        system.close()
