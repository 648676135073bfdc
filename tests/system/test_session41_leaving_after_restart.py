"""Session 41: an executor being stopped (it said "leaving") is `leaving`
in the catalog, and a coordinator restarted before it said "left" knows it
so (its jobs move without spending a restart); but `status` showed it
`reconnecting`, as one behind a cut cable, until it was lost. It shows
`leaving` now.

A coordinator and an executor of their own processes; a job of one
process on it, that process stopped (SIGSTOP: the executor's stop waits
out its grace, 3 s), the executor sent SIGTERM, and the coordinator
stopped (SIGTERM) and started again while it stops."""

from __future__ import annotations

import os
import signal

from _system import System, marking_pipeline, wait_until

from tests.system.test_session40_held_exit_coordinator_restart_review import ENDLESS, _job_process

# (a lease longer than the test: the restarted coordinator counts the executor lost at its end)
TIMEOUT = ("--executor-timeout", "30")


def test_an_executor_being_stopped_shows_leaving_after_a_coordinator_restart(tmp_path):
    marks, pipeline = marking_pipeline(tmp_path, ENDLESS)
    system = System(tmp_path)
    try:
        system.start_coordinator(*TIMEOUT)
        stopped = system.start_executor(1)
        stopped_id = system.executor_id(stopped)
        done = system.cli("submit", pipeline)
        assert done.returncode == 0, done.stderr
        job = done.stdout.splitlines()[0]
        wait_until(lambda: list(marks.glob(f"{job}.1-*")), what=f"{job}'s process to work")
        os.killpg(_job_process(stopped), signal.SIGSTOP)
        stopped.send_signal(signal.SIGTERM)

        def state() -> str:
            return next(e["state"] for e in system.status()["executors"] if e["id"] == stopped_id)

        wait_until(lambda: state() == "leaving", what="the executor to leave")
        # (and held so: its stop SIGKILLs the process 3 s after its SIGINT, and its "left"
        # then counted it lost before the coordinator was stopped, where that stop and the
        # polls before it took longer on a loaded machine: 0.3-1.3 s beside two busy loops,
        # `'lost' == 'leaving'` with 3.2 s more)
        stopped.send_signal(signal.SIGSTOP)
        system.coordinator.send_signal(signal.SIGTERM)
        assert system.coordinator.wait(30) == 143
        system.start_coordinator(*TIMEOUT)
        assert state() == "leaving"
        # (placed as it was, until the executor registers again or is lost)
        assert (system.job(job)["status"], system.job(job)["attempt"]) == ("running", 1), system.job(job)
    finally:
        system.close()
