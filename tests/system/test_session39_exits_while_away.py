"""Session 39: a job process that ends while its executor cannot reach the
coordinator (the coordinator restarting), the executor then stopped
(SIGTERM) before it could tell, and started again on its workdir: its next
register reports that exit (noted in `executor.json`), and the job master
decides as if it had heard it at once. The exit was kept in memory only,
and the coordinator found the process gone, `executor e1 no longer runs
process 0 (it restarted)`, a restart spent: a job whose user function had
raised ran again."""

from __future__ import annotations

import re
import signal

from _system import System, descendants, wait_until
from test_session38_stopped_note_names_its_processes import FAILING
from test_session38_stopped_while_away import LEASE, _started_again, job_with_the_coordinator_down


def _submitted(pipeline, *options):
    """A `submit` of `pipeline`, for `job_with_the_coordinator_down`: its job, running."""
    def submit(system: System) -> str:
        done = system.cli("submit", pipeline, *options)
        assert done.returncode == 0, done.stderr
        job = done.stdout.splitlines()[0]
        wait_until(lambda: system.job(job)["status"] == "running", what=f"{job} to run")
        return job

    return submit


def ended_while_away_then_stopped(system: System, pipeline, flag, *options) -> dict:
    """`pipeline` submitted with `options`, the coordinator stopped, `flag`
    created (the job's process ends), the executor stopped (SIGTERM) and
    started again, then the coordinator: the job's state once decided (ended,
    or running again)."""
    job = job_with_the_coordinator_down(system, _submitted(pipeline, *options))
    flag.touch()
    executor = system.executors[0]
    wait_until(lambda: descendants(executor.pid) == [executor.pid], what="the job process to end")
    executor.send_signal(signal.SIGTERM)
    assert executor.wait(timeout=30) == 143
    flag.unlink()  # (run again, it would not end)
    _started_again(system, 0)
    system.start_coordinator(*LEASE)

    def decided() -> dict | None:
        state = system.job(job)
        return state if state["status"] in ("failed", "completed") or state["attempt"] > 1 else None

    return wait_until(decided, what=f"{job} to end or run again")


def test_a_failure_while_the_coordinator_is_down_is_reported_after_the_executor_restarts(tmp_path):
    system = System(tmp_path)
    flag = tmp_path / "fail"
    pipeline = tmp_path / "failing.py"
    pipeline.write_text(FAILING.format(flag=str(flag)))
    try:
        # (a restart left: run again, it would be `running`, attempt 2)
        state = ended_while_away_then_stopped(system, pipeline, flag, "--max-restarts", "1")
        assert (state["status"], state["attempt"], state["restarts"]) == ("failed", 1, 0), state
        # (its own error; which record met the flag is timing's: 0 if it came before the
        # first record was stepped, 4 once in CI)
        assert re.fullmatch(r"operator 'map\(step\) \(step 1\)': function 'step' raised RuntimeError: "
                            r"told to fail; on record: \d+", state["message"]), state
    finally:
        system.close()


# (ends once the test creates {flag}: its ten records through)
ENDING = """\
import os
import time
from kernel import Dataflow

def step(n):
    while not os.path.exists({flag!r}):
        time.sleep(0.01)
    return n

flow = Dataflow("ending")
flow.from_iterable(range(10), batch_size=10).map(step).sink(id)
"""


def test_a_completion_while_the_coordinator_is_down_is_reported_after_the_executor_restarts(tmp_path):
    """The job completed while the coordinator was down: it was run again
    from its start (`no longer runs process 0`, a restart spent; at
    --max-restarts 0 it failed, never having failed)."""
    system = System(tmp_path)
    flag = tmp_path / "end"
    pipeline = tmp_path / "ending.py"
    pipeline.write_text(ENDING.format(flag=str(flag)))
    try:
        state = ended_while_away_then_stopped(system, pipeline, flag, "--max-restarts", "1")
        assert (state["status"], state["attempt"], state["restarts"], state["message"]) == \
            ("completed", 1, 0, None), state
    finally:
        system.close()
