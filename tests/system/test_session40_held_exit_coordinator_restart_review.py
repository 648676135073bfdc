"""Session 40 review (second round): a peer's exit heard while an executor
is being stopped waits for that executor's "left" (or its loss at its
lease's end), which moves the job free (`JobMaster.process_exited`). An
executor killed mid-stop never says "left": its connection closed, the
coordinator saved it `reconnecting`, as one behind a cut cable. A
coordinator restarted before its lease's end then took it for no stopped
one, and the peer's exit, listed again by the peer's executor as it
registered, was counted a failure: the job failed at --max-restarts 0
(`process 1 on executor e2 was killed (exit -9); gave up after 0
restart(s)`), where it was moved, no restart spent, with no restart of the
coordinator. It stays `leaving` now, and the restarted coordinator moves
the job free.

A coordinator and two executors of their own processes; a job of two
processes, one on each. The stopped executor's stop is held in its grace
(its job process stopped: SIGSTOP), its peer killed (its exit heard, held),
then the stopped executor killed, and the coordinator killed and started
again."""

from __future__ import annotations

import os
import signal
import time

from _system import System, descendants, marking_pipeline, submitted_working, wait_until

# endless, both processes at work (`marks/RUN-PID`)
ENDLESS = """\
import os
import time
from kernel import Dataflow

def step(n):
    path = os.path.join({marks!r}, os.environ["KERNEL_RUN"] + "-" + str(os.getpid()))
    if not os.path.exists(path):
        open(path, "w").close()
    time.sleep(0.01)
    return n

flow = Dataflow("endless")
flow.from_iterable(range(10**9), batch_size=10).key_by(lambda n: n % 16).map_values(step).sink(id)
"""

# seconds for the peer's exit, told, to reach the coordinator (on this machine: a moment)
TOLD_WITHIN = 0.2


def _job_process(executor) -> int:
    """The pid of the job process (a group leader) the executor runs."""
    return wait_until(lambda: next((p for p in descendants(executor.pid) if _leads(p)), None),
                      what="the executor's job process")


def _leads(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def test_a_peers_exit_held_for_an_executor_killed_mid_stop_spends_no_restart_after_a_coordinator_restart(
        tmp_path):
    marks, pipeline = marking_pipeline(tmp_path, ENDLESS)
    system = System(tmp_path)
    try:
        system.start_coordinator()
        stopped, peer = system.start_executor(1), system.start_executor(1)
        stopped_id = system.executor_id(stopped)
        system.executor_id(peer)
        system.executors_up(2)
        job = submitted_working(system, pipeline, marks)
        held, lost = _job_process(stopped), _job_process(peer)
        os.killpg(held, signal.SIGSTOP)  # (its SIGINT waits: the stop waits out its grace, 3 s)
        stopped.send_signal(signal.SIGTERM)
        wait_until(lambda: any(e["id"] == stopped_id and e["state"] == "leaving"
                               for e in system.status()["executors"]), what="the executor to leave")
        os.killpg(lost, signal.SIGKILL)
        peer_log = tmp_path / "executor2.log"
        wait_until(lambda: f"{job} attempt 1 process" in peer_log.read_text()
                   and " exited " in peer_log.read_text(), what="the peer's exit")
        time.sleep(TOLD_WITHIN)
        state = system.job(job)
        assert (state["status"], state["attempt"]) == ("running", 1), state  # (held for its "left")
        closed = system.coordinator_log.read_text().count("its connection closed")
        stopped.kill()
        stopped.wait()
        os.killpg(held, signal.SIGKILL)
        wait_until(lambda: system.coordinator_log.read_text().count("its connection closed") > closed,
                   what="the coordinator to see the connection close")
        system.coordinator.kill()
        system.coordinator.wait()
        system.start_coordinator()

        def decided() -> dict | None:
            state = system.job(job)
            return state if state["status"] not in ("starting", "running") or state["attempt"] > 1 else None

        state = wait_until(decided, what=f"{job}'s attempt 1 to end")
        assert state["status"] in ("restarting", "starting", "running") and state["restarts"] == 0, state
        assert "stopped on purpose" in state["message"], state
    finally:
        system.close()
