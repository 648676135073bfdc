"""Session 38 (review): an executor's note that it was stopped on purpose
while it could not reach the coordinator (`executor.json`'s `stopped`)
names the job processes it stopped, and only those move without spending
a restart. An executor SIGKILLed (its job processes killed with it), then
started again and stopped while the coordinator was still down, stopped
nothing, yet noted the stop: the job lost to the SIGKILL moved free, and at
--max-restarts 0 it ran again instead of failing."""

from __future__ import annotations

import signal

from _system import System, descendants, wait_until
from test_session35_stopped_executor_restarts import _endless
from test_session38_stopped_while_away import LEASE, _started_again, job_with_the_coordinator_down

UNREACHABLE = "executor: cannot reach the coordinator"
# endless, until the test creates {flag}: then its step raises (the job process fails on its own)
FAILING = """\
import os
import time
from kernel import Dataflow

def step(n):
    if os.path.exists({flag!r}):
        raise RuntimeError("told to fail")
    time.sleep(0.01)
    return n

flow = Dataflow("failing")
flow.from_iterable(range(10**9), batch_size=10).map(step).sink(id)
"""
GAVE_UP = "executor e1 no longer runs process 0 (it restarted); gave up after 0 restart(s)"


def _fails_once_back(system: System, job: str) -> None:
    """The stopped executor started again, then the coordinator: `job`
    fails, its loss counted (not run again, moved free)."""
    _started_again(system, 0)
    system.start_coordinator(*LEASE)

    def decided() -> dict | None:
        state = system.job(job)
        return state if state["status"] == "failed" or state["attempt"] > 1 else None

    state = wait_until(decided, what=f"{job} to fail or run again")
    assert (state["status"], state["message"]) == ("failed", GAVE_UP), state


def test_a_stop_that_stopped_no_process_does_not_excuse_a_kill_before_it(tmp_path):
    system = System(tmp_path)
    log = system.root / "executor1.log"
    try:
        job = job_with_the_coordinator_down(system, lambda s: _endless(s, tmp_path, "--max-restarts", "0"))
        system.executors[0].kill()  # (its job process goes with it)
        system.executors[0].wait()
        said = log.read_text().count(UNREACHABLE)
        _started_again(system, 0)
        # (dialling: its SIGTERM handler is in place, and it runs no job process)
        wait_until(lambda: log.read_text().count(UNREACHABLE) > said, what="the executor to dial")
        system.executors[0].send_signal(signal.SIGTERM)
        assert system.executors[0].wait(timeout=30) == 143
        _fails_once_back(system, job)
    finally:
        system.close()


def test_a_process_that_failed_before_the_stop_is_not_excused_by_it(tmp_path):
    """The job's process fails on its own (its step raises) while the
    coordinator is down; the executor, stopped then, stops nothing: the
    failure still counts (it moved free, and ran again at --max-restarts 0).
    (Session 39: the executor notes the exit it could not report, and the
    job fails with its own error, `test_session39_exits_while_away`.)"""
    system = System(tmp_path)
    flag = tmp_path / "fail"
    pipeline = tmp_path / "failing.py"
    pipeline.write_text(FAILING.format(flag=str(flag)))

    def submit(system: System) -> str:
        done = system.cli("submit", pipeline, "--max-restarts", "0")
        assert done.returncode == 0, done.stderr
        job = done.stdout.splitlines()[0]
        wait_until(lambda: system.job(job)["status"] == "running", what=f"{job} to run")
        return job

    try:
        job = job_with_the_coordinator_down(system, submit)
        flag.touch()
        executor = system.executors[0]
        wait_until(lambda: descendants(executor.pid) == [executor.pid], what="the job process to fail")
        executor.send_signal(signal.SIGTERM)
        assert executor.wait(timeout=30) == 143
        flag.unlink()
        _started_again(system, 0)
        system.start_coordinator(*LEASE)

        def decided() -> dict | None:
            state = system.job(job)
            return state if state["status"] != "running" or state["attempt"] > 1 else None

        state = wait_until(decided, what=f"{job} to fail or run again")
        assert (state["status"], state["attempt"]) == ("failed", 1), state
        assert "told to fail" in state["message"], state
    finally:
        system.close()
