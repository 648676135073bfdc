"""Session 41 review (from the second executor review, whose library fix
for this duplicated the links review's `_cause`, merged already): a job
process killed (SIGKILL) with real processes restarts said as its cause,
`process 1 on executor e2 was killed (exit -9)`, not as its peer's word of
it, `lost process 1 (...): link to process 1 closed: code 1006 before the
run finished`, which is heard last (3 runs of 3 said the peer's word, at
--max-restarts 0, before the fix)."""

from __future__ import annotations

import os
import signal

from _system import System, marking_pipeline, submitted_working, wait_until

from tests.system.test_session40_held_exit_coordinator_restart_review import ENDLESS, _job_process


def test_a_job_process_killed_is_said_killed_not_lost_by_its_peer(tmp_path):
    marks, pipeline = marking_pipeline(tmp_path, ENDLESS)
    system = System(tmp_path)
    try:
        system.start_coordinator()
        executors = [system.start_executor(1), system.start_executor(1)]
        ids = [system.executor_id(e) for e in executors]
        system.executors_up(2)
        job = submitted_working(system, pipeline, marks)
        second = system.job(job)["placement"][1]
        os.killpg(_job_process(executors[ids.index(second)]), signal.SIGKILL)
        wait_until(lambda: system.job(job)["status"] != "running", what=f"{job} to end")
        state = system.job(job)
        assert (state["status"], state["restarts"]) == ("failed", 0), state
        assert state["message"] == (f"process 1 on executor {second} was killed (exit -9); "
                                    "gave up after 0 restart(s)"), state
    finally:
        system.close()

