"""Session 36: a coordinator stopped (an upgrade, SIGTERM) for longer than
the executors' lease: the executors fence their job processes (SIGKILL,
0.8 of the timeout without an answer), and the coordinator started again
finds them ended. That is the coordinator's absence, not the jobs' failure:
they run again without spending a restart (`--max-restarts` counts
failures). Each such exit was counted (`process 0 on executor e1 was killed
(exit -9)`), and every job at `--max-restarts 0` failed; a job of two
processes the same, whichever of its exits came first (the fenced one, or
its peer's `lost process`)."""

from __future__ import annotations

import os
import signal

from _system import System, wait_until
from test_session35_stopped_executor_restarts import MARKING, _job_processes
from test_system import write


def _submitted(system, *args) -> str:
    done = system.cli("submit", *args, "--max-restarts", "0")
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[0]


def _fenced(system, n: int) -> bool:
    return all("no answer from the coordinator for over" in (system.root / f"executor{i}.log").read_text()
               for i in range(1, n + 1))


def _any_fenced(system, n: int) -> bool:
    """One of the first `n` executors fenced its job processes: the one the
    single job was placed on (it has no peer to end it first), which is the
    first executor to have registered, not always `executor1` (under load the
    second registered first, held the pair's process alone, lost it to its
    peer's `lost process` before its fence, and logged none)."""
    return any("no answer from the coordinator for over" in (system.root / f"executor{i}.log").read_text()
               for i in range(1, n + 1))


def _ended(system, n: int, processes: list[str]) -> bool:
    """Each of `processes` (`job-2 attempt 1 process 0`) said to have exited
    by one of the first `n` executors (fenced, or a peer's `lost process`
    just before its own executor fenced it: then that one has none to fence)."""
    said = "".join((system.root / f"executor{i}.log").read_text() for i in range(1, n + 1))
    return all(f"{process} exited" in said for process in processes)


def test_jobs_fenced_while_the_coordinator_was_stopped_spend_no_restart(tmp_path):
    system = System(tmp_path)
    try:
        system.start_coordinator()
        for _ in range(2):
            system.start_executor(2)
        system.executors_up(2)
        marks = tmp_path / "marks"
        marks.mkdir()
        pipeline = write(tmp_path / "marking.py", MARKING.format(marks=str(marks)))
        single = _submitted(system, pipeline)
        pair = _submitted(system, pipeline, "--processes", "2")
        # (all three processes at work: the pair's peers connected)
        wait_until(lambda: len(list(marks.glob("job-*.1-*"))) >= 3, what="the jobs' processes to work")
        system.coordinator.send_signal(signal.SIGTERM)
        assert system.coordinator.wait(timeout=30) == 143
        # away past the executors' lease: they fence their job processes
        ended = [f"{single} attempt 1 process 0", *(f"{pair} attempt 1 process {i}" for i in (0, 1))]
        wait_until(lambda: _any_fenced(system, 2) and _ended(system, 2, ended),
                   what="the job processes fenced")
        system.start_coordinator()
        for job in (single, pair):
            def moved(job=job):
                state = system.job(job)
                assert state["status"] not in ("failed", "completed", "killed"), state
                return state["status"] == "running" and state["attempt"] == 2 and state

            state = wait_until(moved, what=f"{job}'s attempt 2 to run")
            assert state["restarts"] == 0, state
            assert "ended while the coordinator was away" in state["message"], state
            assert state["message"].endswith("not a failure, no restart spent"), state
        # a failure still counts once the executors are back: at --max-restarts 0, it fails
        (executor,) = system.job(single)["placement"]
        os.kill(min(_job_processes(system, executor, single)), signal.SIGKILL)
        state = wait_until(lambda: (s := system.job(single))["status"] == "failed" and s, what="it to fail")
        assert state["message"].endswith("gave up after 0 restart(s)"), state
        assert system.cli("kill", pair).returncode == 0
    finally:
        system.close()


def test_jobs_fenced_while_the_coordinator_was_frozen_spend_no_restart(tmp_path):
    # SIGSTOPped (a paused VM, a debugger) past the executors' lease, it woke
    # to find every executor silent for longer than the timeout: each counted
    # lost (`no heartbeat for 2 s`) and its jobs failed at --max-restarts 0,
    # though it was the coordinator that had not been there.
    system = System(tmp_path)
    try:
        system.start_coordinator()
        system.start_executor(1)
        system.executors_up(1)
        marks = tmp_path / "marks"
        marks.mkdir()
        job = _submitted(system, write(tmp_path / "marking.py", MARKING.format(marks=str(marks))))
        wait_until(lambda: list(marks.glob(f"{job}.1-*")), what=f"{job} to work")
        system.coordinator.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: _fenced(system, 1), what="the executor to fence its job process")
        finally:
            system.coordinator.send_signal(signal.SIGCONT)

        def moved():
            state = system.job(job)
            assert state["status"] not in ("failed", "completed", "killed"), state
            return state["status"] == "running" and state["attempt"] == 2 and state

        state = wait_until(moved, what=f"{job}'s attempt 2 to run")
        assert state["restarts"] == 0 and state["message"].endswith("no restart spent"), state
        assert system.executors[0].poll() is None
        assert system.cli("kill", job).returncode == 0
    finally:
        system.close()
