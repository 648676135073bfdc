"""README, "A running system": a job's log ends in `interrupted` after a
`kill`, and `logs --follow` prints the job's output until it ends. The
coordinator counted a killed job as ended from the moment it was killed,
while its processes were still being stopped (and writing their last
lines), so a `logs --follow` that asked then stopped without them: the
log ended in `interrupted`, the follower's output did not.

Real processes: a coordinator, an executor, the CLI."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager

from _system import a_system, wait_until

# (its last words a moment after the Ctrl-C the kill sends: the window in
# which the job was killed while its process still wrote)
PIPELINE = """\
import atexit, itertools, time
from kernel import Dataflow

atexit.register(lambda: (time.sleep(0.25), print("last words", flush=True)))
flow = Dataflow()
flow.from_iterable(itertools.count()).map(lambda x: time.sleep(0.01) or x).sink(lambda x: None)
"""


@contextmanager
def followed_running(system, tmp_path, text: str):
    """A job of the pipeline `text` submitted to `system` and running, and
    a `logs --follow` of it that has printed its attempt's header: yields
    (the job, the follower); the follower killed after."""
    pipeline = tmp_path / "endless.py"
    pipeline.write_text(text)
    job = system.cli("submit", pipeline).stdout.splitlines()[0]
    wait_until(lambda: system.job(job)["status"] == "running", what="the job to run")
    follower = subprocess.Popen([sys.executable, "-m", "kernel", "logs", job, "--follow"],
                                stdout=subprocess.PIPE, text=True, env=system.env, cwd=tmp_path)
    try:
        assert follower.stdout.readline().startswith(f"--- {job} attempt 1")
        yield job, follower
    finally:
        follower.kill()


def test_logs_follow_of_a_killed_job_prints_its_last_lines(tmp_path):
    with a_system(tmp_path) as system:
        with followed_running(system, tmp_path, PIPELINE) as (job, follower):
            assert system.cli("kill", job).returncode == 0
            followed, _ = follower.communicate(timeout=60)
        whole = system.cli("logs", job).stdout
    assert whole.splitlines()[-2:] == ["interrupted", "last words"], whole
    assert followed.splitlines()[-2:] == ["interrupted", "last words"], followed
