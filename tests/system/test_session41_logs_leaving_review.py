"""Review of 8d1f485 (`logs` says `stopping` while a killed job's processes
are being stopped): a job killed while its executor is being stopped
(SIGTERM: "leaving") has that stop run apart (`JobMaster._stop_ended`), not
waited for by the kill, and `logs` said the job `killed` at once, so a
`logs --follow` stopped before the last lines its process still wrote
there (the log had `interrupted`, `last words`; the follower only
`interrupted`).

Real processes: a coordinator, an executor, the CLI."""

from __future__ import annotations

import os
import signal

from _system import a_system, wait_until

from tests.system.test_session41_readme_logs import followed_running

# (its last words once the test has killed the job (GO written), deaf to the
# kill's Ctrl-C, after the Ctrl-C of the executor's stop: the window in which
# the job is killed while its executor still stops it. It was a fixed 2 s;
# 2.5 s at most still, within the 3 s before the executor's SIGKILL)
PIPELINE = """\
import atexit, itertools, os, signal, time
from kernel import Dataflow

def last_words():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    began = time.monotonic()
    while not os.path.exists({go!r}) and time.monotonic() - began < 2.5:
        time.sleep(0.01)
    print("last words", flush=True)

atexit.register(last_words)
flow = Dataflow()
flow.from_iterable(itertools.count()).map(lambda x: time.sleep(0.01) or x).sink(lambda x: None)
"""


def test_logs_follow_of_a_job_killed_while_its_executor_leaves_prints_its_last_lines(tmp_path):
    with a_system(tmp_path) as system:
        go = tmp_path / "go"
        with followed_running(system, tmp_path, PIPELINE.format(go=str(go))) as (job, follower):
            os.kill(system.executors[0].pid, signal.SIGTERM)
            wait_until(lambda: any(e["state"] == "leaving" for e in system.status()["executors"]),
                       what="the executor to leave", every=0.02)
            assert system.cli("kill", job).returncode == 0
            go.touch()  # (killed: its last words may come)
            followed, _ = follower.communicate(timeout=60)
        system.executors[0].wait(timeout=30)  # (its log complete: its process ended before it left)
    log = (tmp_path / "executor1" / "logs" / f"{job}.log").read_text()
    assert log.splitlines()[-2:] == ["interrupted", "last words"], log
    assert followed.splitlines()[-2:] == ["interrupted", "last words"], followed
