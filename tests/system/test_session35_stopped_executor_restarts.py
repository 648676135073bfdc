"""Session 35: an executor stopped on purpose (SIGTERM from Kubernetes,
Slurm or systemd; Ctrl-C) moves its jobs to the executors left without
spending their restarts: `--max-restarts` counts failures only. Each move
was counted as a restart, so a job moved off executors being stopped one
after another (a rolling upgrade) failed, `gave up after 3 restart(s)`,
without ever failing; a job of two processes counted its peer's exit
(`lost process 0`, the stopped executor's process gone) as a failure too;
and an executor that was stopping when it was SIGKILLed (a grace period
over) counted as a failure at its lease's end."""

from __future__ import annotations

import os
import signal
import time

import pytest
from _system import System, a_system, descendants, wait_until
from test_system import slow, write

# endless; each process marks `marks/RUN-PID` once it handles records (its peers connected)
MARKING = """\
import os
import time
from kernel import Dataflow

def mark(n):
    path = os.path.join({marks!r}, os.environ["KERNEL_RUN"] + "-" + str(os.getpid()))
    if not os.path.exists(path):
        open(path, "w").close()
    time.sleep(0.01)
    return n

flow = Dataflow("marking")
flow.from_iterable(range(10**9), batch_size=10).key_by(lambda n: n % 16).map_values(mark).sink(id)
"""
STOPPED = "moved off executor {}, which was stopped on purpose (not a failure: no restart spent)"


@pytest.fixture
def system(tmp_path):
    with a_system(tmp_path, executors=3, cores=1) as system:
        yield system


def _endless(system, tmp_path, *options) -> str:
    tmp_path.mkdir(exist_ok=True)
    pipeline, _ = slow(tmp_path, pause=0.01, count=10**9, out=tmp_path / "out")
    done = system.cli("submit", pipeline, *options)
    assert done.returncode == 0, done.stderr
    job = done.stdout.splitlines()[0]
    wait_until(lambda: system.job(job)["status"] == "running", what=f"{job} to run")
    return job


def _executor(system, executor_id: str):
    return next(p for p in system.executors if system.executor_id(p) == executor_id)


def _running(system, job: str, attempt: int) -> dict:
    def running():
        state = system.job(job)
        assert state["status"] not in ("completed", "failed", "killed"), state
        return state["status"] == "running" and state["attempt"] == attempt and state

    return wait_until(running, what=f"{job}'s attempt {attempt} to run")


def _job_processes(system, executor_id: str, job: str) -> list[int]:
    """The pids of the job's processes (launcher and kernels) on that executor."""
    found = []
    for pid in descendants(_executor(system, executor_id).pid)[1:]:
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if f"KERNEL_JOB={job}".encode() in f.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    assert found, f"no process of {job} on executor {executor_id}"
    return found


def test_executors_stopped_one_after_another_spend_no_restart(system, tmp_path):
    job = _endless(system, tmp_path, "--max-restarts", "1")
    for attempt in (2, 3):  # (two moves: with each counted, it failed at the second)
        (executor,) = system.job(job)["placement"]
        victim = _executor(system, executor)
        victim.send_signal(signal.SIGTERM)
        assert victim.wait(timeout=30) == 143
        state = _running(system, job, attempt)
        assert (state["restarts"], state["message"]) == (0, STOPPED.format(executor)), state
        assert state["placement"] != [executor]
    # a failure still counts: its process killed, the job restarts, a restart spent...
    (executor,) = system.job(job)["placement"]
    os.kill(min(_job_processes(system, executor, job)), signal.SIGKILL)
    state = _running(system, job, 4)
    assert state["restarts"] == 1, state
    # ... and the next one is past --max-restarts 1
    os.kill(min(_job_processes(system, executor, job)), signal.SIGKILL)
    state = wait_until(lambda: (s := system.job(job))["status"] == "failed" and s, what=f"{job} to fail")
    assert (state["restarts"], state["attempt"]) == (1, 4), state
    assert state["message"].endswith("; gave up after 1 restart(s)"), state


def test_a_two_process_job_whose_executor_is_stopped_spends_no_restart(tmp_path):
    # The stopped executor's process ends at its SIGINT, and its peer on
    # another executor exits with `lost process ...`, reported while the
    # executor still stops its other job's process (slow: SIGKILLed 3 s
    # later), before it says it has left: that exit, the stop's doing, was
    # counted as a failure, and the job, at --max-restarts 0, failed.
    with a_system(tmp_path, executors=3, cores=2) as system:
        marks = tmp_path / "marks"
        marks.mkdir()
        pipeline = write(tmp_path / "marking.py", MARKING.format(marks=str(marks)))
        done = system.cli("submit", pipeline, "--processes", "2", "--max-restarts", "0")
        assert done.returncode == 0, done.stderr
        job = done.stdout.splitlines()[0]
        # (both its processes at work: stopped as it started, its peer waited for it in vain)
        wait_until(lambda: len(list(marks.glob(f"{job}.1-*"))) >= 2, what=f"{job}'s processes to work")
        executor = system.job(job)["placement"][0]
        other = _endless(system, tmp_path / "other", "--executors", executor)
        for pid in _job_processes(system, executor, other):
            os.kill(pid, signal.SIGSTOP)
        log = system.coordinator_log.read_text()
        victim = _executor(system, executor)
        victim.send_signal(signal.SIGTERM)
        assert victim.wait(timeout=30) == 143
        state = _running(system, job, 2)
        assert (state["restarts"], state["processes"], state["message"]) == (0, 2, STOPPED.format(executor))
        assert executor not in state["placement"]
        # the other job, which runs on that executor only (--executors), waits for it, no restart spent
        state = wait_until(lambda: (s := system.job(other))["status"] == "restarting" and s, what=f"{other}")
        assert (state["restarts"], state["message"]) == (0, STOPPED.format(executor)), state
        # (the peer's exit, heard before the executor had left, moved it at once; it now waits
        # for the "left", which may tell the stopped executor's own process failed: session 40
        # review, test_session40_peer_lost_during_leave_review.py)
        said = system.coordinator_log.read_text()[len(log):]
        assert said.index(f"executor {executor} lost") < said.index(f"{job} placed again, no restart spent")
        assert system.cli("kill", job).returncode == 0


def test_an_executor_killed_while_it_stops_spends_no_restart(system, tmp_path):
    # SIGTERMed, it tells the coordinator it is leaving and stops its job
    # processes (SIGINT, SIGKILL 3 s later); SIGKILLed meanwhile (a grace
    # period over), it never says it has left: the coordinator counts it
    # lost at its lease's end, and the job moves, a deliberate stop still
    job = _endless(system, tmp_path, "--max-restarts", "0")
    executor, victim = _stopping(system, job)
    victim.kill()
    victim.wait()
    state = _running(system, job, 2)
    assert (state["restarts"], state["message"]) == (0, STOPPED.format(executor)), state
    assert system.cli("kill", job).returncode == 0


def test_every_job_of_a_stopped_executor_moves_without_spending_a_restart(tmp_path):
    # The coordinator moves a stopped executor's jobs one after another, each
    # first stopped everywhere it runs: the first's stop is slow here (its
    # other process, on another executor, is stopped by SIGSTOP, so it is
    # SIGKILLed 3 s later), and the job master's round meanwhile found the
    # second job placed on an executor no longer connected, and restarted it
    # as a failure (at --max-restarts 0: failed).
    with a_system(tmp_path, executors=3, cores=2) as system:
        first = _endless(system, tmp_path / "first", "--processes", "2", "--max-restarts", "0")
        executor, peer = system.job(first)["placement"]
        second = _endless(system, tmp_path / "second", "--executors", executor, "--max-restarts", "0")
        for pid in _job_processes(system, peer, first):
            os.kill(pid, signal.SIGSTOP)
        victim = _executor(system, executor)
        victim.send_signal(signal.SIGTERM)
        assert victim.wait(timeout=30) == 143
        # (the second waits for its executor, named with --executors, to come back)
        state = wait_until(lambda: (s := system.job(second))["status"] != "running" and s, what=second)
        assert (state["status"], state["restarts"], state["message"]) == \
            ("restarting", 0, STOPPED.format(executor)), state
        state = _running(system, first, 2)
        assert (state["restarts"], state["message"]) == (0, STOPPED.format(executor)), state
        assert system.cli("kill", first).returncode == 0
        assert system.cli("kill", second).returncode == 0


def _stopping(system, job: str):
    """The job's executor SIGTERMed, its job processes slow to stop (stopped
    by SIGSTOP: SIGKILLed 3 s later), once the catalog holds it `leaving`:
    (its id, its process)."""
    (executor,) = system.job(job)["placement"]
    victim = _executor(system, executor)
    for pid in _job_processes(system, executor, job):
        os.kill(pid, signal.SIGSTOP)
    victim.send_signal(signal.SIGTERM)
    wait_until(lambda: {e["id"]: e["state"] for e in _catalog(system)["executors"]}[executor] == "leaving",
               what=f"the catalog to hold executor {executor} leaving")
    return executor, victim


def test_an_executor_killed_while_it_stops_and_started_again_spends_no_restart(tmp_path):
    # Started again on its workdir before its lease is over (30 s here), it
    # registers listing no process: the job moves then, no restart spent.
    system = System(tmp_path)
    try:
        system.start_coordinator("--executor-timeout", "30")
        for _ in range(2):
            system.start_executor(1)
        system.executors_up(2)
        job = _endless(system, tmp_path, "--max-restarts", "0")
        executor, victim = _stopping(system, job)
        victim.kill()  # (a grace period over)
        victim.wait()
        killed, n = time.monotonic(), system.executors.index(victim)
        system.executors[n] = system._spawn(  # (on its workdir: its id)
            ["executor", "--cores", "1", "--workdir", str(tmp_path / f"executor{n + 1}"),
             "--host", "127.0.0.1", "--heartbeat", "0.4"], tmp_path / f"executor{n + 1}.log",
            ignore_sigint=True)
        state = _running(system, job, 2)
        assert time.monotonic() - killed < 20  # (not at its lease's end)
        assert (state["restarts"], state["message"]) == (0, STOPPED.format(executor)), state
        assert system.cli("kill", job).returncode == 0
    finally:
        system.close()


def test_an_executor_stopping_as_the_coordinator_restarts_spends_no_restart(system, tmp_path):
    # The coordinator killed as the executor stops, and the executor killed
    # too: the restarted coordinator finds it `leaving` in the catalog, and
    # when it does not come back, moves its job, no restart spent.
    job = _endless(system, tmp_path, "--max-restarts", "0")
    executor, victim = _stopping(system, job)
    for proc in (system.coordinator, victim):
        proc.kill()
        proc.wait()
    system.start_coordinator()
    state = _running(system, job, 2)
    assert (state["restarts"], state["message"]) == (0, STOPPED.format(executor)), state
    assert system.cli("kill", job).returncode == 0


def _catalog(system) -> dict:
    import asyncio

    from kernel.system import Client

    async def ask():
        async with Client((system.host, system.port), system.env["KERNEL_SECRET"].encode()) as client:
            return await client.request("catalog")

    return asyncio.run(ask())
