"""Session 34: an executor whose workdir is deleted under it (a tmp
cleaner's doing, an `rm -rf`) while it runs. Every start failed with
`internal error: FileNotFoundError: ... logs/job-1.log` (its logs
directory gone), so a job placed there failed after its restarts; and its
next register (a coordinator restarted) asked for no id, its executor.json
gone: it became another executor, its running jobs stopped as strangers'.
It makes the directories again, and keeps its id."""

from __future__ import annotations

import json
import shutil
import signal

from _system import a_system, wait_until
from test_system import NOOP, write


def test_an_executor_whose_workdir_was_deleted_runs_jobs_and_keeps_its_id(tmp_path):
    with a_system(tmp_path) as system:
        executor = system.executors[0]
        own = system.executor_id(executor)
        shutil.rmtree(tmp_path / "executor1")
        done = system.cli("submit", write(tmp_path / "noop.py", NOOP), "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        job = system.job(done.stdout.splitlines()[0])
        assert (job["status"], job["restarts"]) == ("completed", 0), job
        system.coordinator.send_signal(signal.SIGTERM)
        assert system.coordinator.wait(timeout=30) == 143
        system.start_coordinator()
        wait_until(lambda: [(e["id"], e["state"]) for e in system.status()["executors"]] == [(own, "up")],
                   what=f"executor {own} to register again, under its id")
        assert json.loads((tmp_path / "executor1" / "executor.json").read_text())["id"] == own
