"""Session 38: an executor stopped on purpose (SIGTERM) while it cannot
reach the coordinator (the coordinator restarting) stops its job processes
with no word to anyone. Started again on its workdir (a rolling upgrade, a
machine's services restarted together), it says so when it registers, and
its jobs move without spending a restart, as when the coordinator hears the
stop. Each was counted as a failure: `executor e1 no longer runs process 0
(it restarted); gave up after 0 restart(s)` at --max-restarts 0. A SIGKILL
(the OOM killer, a supervisor's restart) still spends one: the word is the
stopped executor's, and said once."""

from __future__ import annotations

import signal

from _system import System, wait_until
from test_session35_stopped_executor_restarts import STOPPED, _endless


def _started_again(system: System, n: int) -> None:
    """Executor n (from 0) started again on its workdir: under its id."""
    workdir = system.root / f"executor{n + 1}"
    system.executors[n] = system._spawn(
        ["executor", "--cores", "1", "--workdir", str(workdir), "--host", "127.0.0.1", "--heartbeat", "0.4"],
        system.root / f"executor{n + 1}.log", ignore_sigint=True)


# (a lease long enough for an executor started again to come back within it, loaded)
LEASE = ("--executor-timeout", "15")


def job_with_the_coordinator_down(system: System, submit) -> str:
    """A coordinator and one executor started, a job `submit(system)` (its
    id) running there, the coordinator then stopped (SIGTERM): the job."""
    system.start_coordinator(*LEASE)
    system.start_executor(1)
    system.executors_up(1)
    job = submit(system)
    system.coordinator.send_signal(signal.SIGTERM)
    assert system.coordinator.wait(timeout=30) == 143
    return job


def test_an_executor_stopped_while_the_coordinator_is_down_spends_no_restart(tmp_path):
    system = System(tmp_path)
    try:
        job = job_with_the_coordinator_down(system, lambda s: _endless(s, tmp_path, "--max-restarts", "0"))
        system.executors[0].send_signal(signal.SIGTERM)
        assert system.executors[0].wait(timeout=30) == 143
        _started_again(system, 0)
        system.start_coordinator(*LEASE)

        def attempt(n: int) -> dict:
            state = system.job(job)
            assert state["status"] not in ("failed", "completed", "killed"), state
            return state["status"] == "running" and state["attempt"] == n and state

        state = wait_until(lambda: attempt(2), what=f"{job}'s attempt 2 to run")
        assert (state["restarts"], state["message"]) == (0, STOPPED.format("e1")), state
        # said once: killed now and started again, a restart is spent (at 0: it fails)
        system.executors[0].kill()
        system.executors[0].wait()
        _started_again(system, 0)
        state = wait_until(lambda: (s := system.job(job))["status"] == "failed" and s, what=f"{job} to fail")
        assert state["message"] == \
            "executor e1 no longer runs process 0 (it restarted); gave up after 0 restart(s)", state
    finally:
        system.close()
