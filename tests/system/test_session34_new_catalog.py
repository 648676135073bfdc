"""Session 34: a coordinator started on a new catalog (another --data, its
catalog deleted) gives job ids again from job-1, while its executors keep
what they ran for the last one: the ended processes (job, attempt,
process) they list, their job logs and job directories. A new job-1 placed
where the last catalog's job-1 ran was refused as `job-1 attempt 1 process
0 already runs here` (a restart spent; the last catalog's job-7 of four
attempts made a new job-7 fail after its three restarts), and `logs job-1`
began with the other job-1's output."""

from __future__ import annotations

import signal

from _system import System, descendants, running, wait_until
from test_system import write

SAYS = """\
from kernel import Dataflow

flow = Dataflow("says")
flow.from_iterable([{word!r}]).print()
"""


def test_a_job_of_a_new_catalog_is_not_taken_for_the_last_ones_job_of_that_id(tmp_path):
    system = System(tmp_path)
    try:
        system.start_coordinator()
        system.start_executor(1)
        system.executors_up(1)
        first = system.cli("submit", write(tmp_path / "first.py", SAYS.format(word="first-catalog")),
                           "--wait")
        assert first.returncode == 0, first.stderr
        assert first.stdout.splitlines()[0] == "job-1"
        system.coordinator.send_signal(signal.SIGTERM)
        assert system.coordinator.wait(timeout=30) == 143
        system.start_coordinator("--data", str(tmp_path / "another"))
        system.executors_up(1)
        second = system.cli("submit", write(tmp_path / "second.py", SAYS.format(word="second-catalog")),
                            "--wait")
        assert second.returncode == 0, second.stderr
        assert second.stdout.splitlines()[0] == "job-1"
        state = system.job("job-1")
        assert (state["status"], state["restarts"], state["attempt"]) == ("completed", 0, 1), state
        logs = system.cli("logs", "job-1")
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.count("--- job-1 attempt") == 1, logs.stdout
        assert "second-catalog" in logs.stdout and "first-catalog" not in logs.stdout
        # the last catalog's are kept aside, not lost
        (aside,) = (tmp_path / "executor1" / "previous").iterdir()
        assert "first-catalog" in (aside / "logs" / "job-1.log").read_text()
        assert (aside / "jobs" / "job-1").is_dir() and (tmp_path / "executor1" / "jobs" / "job-1").is_dir()
    finally:
        system.close()


ENDLESS = """\
import time
from kernel import Dataflow

def slowly(n):
    time.sleep(0.01)
    return n

flow = Dataflow({name!r})
flow.from_iterable(range(10**9), batch_size=10).map(slowly).sink(id)
"""


def test_a_process_of_another_catalogs_job_is_stopped_not_adopted_as_this_ones(tmp_path):
    """Catalog A's job-1 (its coordinator killed, its executor stopped),
    then catalog B's job-1 on the same executor (B killed): A's coordinator
    back finds the executor running a job-1 attempt 1 process 0, B's. It
    took it for its own job-1's and adopted it (another pipeline running as
    A's job, for good); it stops it, and A's job-1 runs again."""
    system = System(tmp_path)
    patient = ("--executor-timeout", "10")  # (the executor keeps its process through B's death)
    try:
        system.start_coordinator(*patient)
        system.start_executor(1)
        system.executors_up(1)
        a = system.cli("submit", write(tmp_path / "a.py", ENDLESS.format(name="a")))
        assert a.stdout.splitlines() == ["job-1"], a.stderr
        wait_until(lambda: system.job("job-1")["status"] == "running", what="A's job-1 to run")
        system.coordinator.kill()
        system.coordinator.wait()
        executor = system.executors[0]
        executor.send_signal(signal.SIGTERM)  # (its job process stopped with it)
        assert executor.wait(timeout=30) == 143
        system.executors.clear()
        system._started = 0
        system.start_executor(1)  # on its workdir again, as a supervisor would
        system.start_coordinator(*patient, "--data", str(tmp_path / "b"))
        system.executors_up(1)
        b = system.cli("submit", write(tmp_path / "b.py", ENDLESS.format(name="b")))
        assert b.stdout.splitlines() == ["job-1"], b.stderr
        wait_until(lambda: system.job("job-1")["status"] == "running", what="B's job-1 to run")
        b_process = [p for p in descendants(system.executors[0].pid) if "b.py" in _command(p)]
        assert b_process
        system.coordinator.kill()
        system.coordinator.wait()
        system.start_coordinator(*patient)  # A's catalog: its job-1 running on that executor
        state = wait_until(lambda: (lambda j: j if j["attempt"] >= 2 and j["status"] == "running" else None)(
            system.job("job-1")), timeout=15, what="A's job-1 to run again, not to adopt B's process")
        assert state["name"] == "a.py:flow"
        wait_until(lambda: not running(b_process), what="B's process to be stopped")
    finally:
        system.close()


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_an_older_catalog_opened_while_its_lock_is_held_is_used_and_given_its_id_later(tmp_path):
    """Its id is written apart from the schema: a catalog of before it, all
    of whose tables are there, opened while a backup (here a `BEGIN
    IMMEDIATE`) holds its lock, stopped the coordinator's start with
    `database is locked` (it started before there was an id to write)."""
    import sqlite3

    from kernel.system._catalog import Catalog

    catalog = Catalog(tmp_path)
    catalog.close()
    other = sqlite3.connect(tmp_path / "catalog.sqlite", isolation_level=None)
    try:
        other.execute("DROP TABLE meta")  # (as written before it)
        other.execute("BEGIN IMMEDIATE")
        catalog = Catalog(tmp_path)
        assert catalog.identity is None  # (executors are told none: nothing is moved aside)
        catalog.close()
        other.execute("COMMIT")
    finally:
        other.close()
    catalog = Catalog(tmp_path)
    try:
        assert catalog.identity is not None
        first = catalog.identity
    finally:
        catalog.close()
    catalog = Catalog(tmp_path)
    try:
        assert catalog.identity == first
    finally:
        catalog.close()


def test_an_executor_that_cannot_move_the_last_catalogs_logs_aside_serves_on(tmp_path):
    """(WORKDIR/previous a file, say: the move fails.) The executor said
    so and ended with a traceback, at each register."""
    workdir = tmp_path / "executor1"
    workdir.mkdir()
    (workdir / "executor.json").write_text('{"id": "e1", "catalog": "0123abcd"}')  # another catalog's
    (workdir / "previous").write_text("in the way")
    system = System(tmp_path)
    try:
        system.start_coordinator()
        executor = system.start_executor(1)
        system.executors_up(1)
        done = system.cli("submit", write(tmp_path / "says.py", SAYS.format(word="served")), "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        assert executor.poll() is None
        assert "cannot be moved to" in (tmp_path / "executor1.log").read_text()
    finally:
        system.close()
