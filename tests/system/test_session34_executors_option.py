"""Session 34: `submit --executors` as users write lists. "e1, e2" was read
as "e1" and " e2", refused by the coordinator (exit 1) as `no such
executor:  e2`; "e1," as "e1" and "", `no such executor:  (known: ...)`;
and `--executors ""` was taken as no --executors at all, the job placed
anywhere. Spaces around an id are dropped; an empty id is a usage error,
exit 2, before anything is sent."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _system import System, free_port
from test_system import NOOP, write


@pytest.mark.parametrize("given", ["e1,", "", " ", "e1,,e2"])
def test_an_empty_executor_id_is_a_usage_error(tmp_path, given):
    pipeline = write(tmp_path / "noop.py", NOOP)
    env = dict(os.environ, KERNEL_SECRET="s", KERNEL_COORDINATOR=f"127.0.0.1:{free_port()}")  # (nobody)
    done = subprocess.run([sys.executable, "-m", "kernel", "submit", pipeline, "--executors", given],
                          capture_output=True, text=True, timeout=60, env=env)
    assert (done.returncode, done.stderr) == (2, f"error: --executors: an empty executor id in {given!r} "
                                                 "(ID,...: executor ids as `status` lists them)\n")


def test_spaces_around_executor_ids_are_dropped(tmp_path):
    system = System(tmp_path)
    try:
        system.start_coordinator()
        first, second = system.start_executor(1), system.start_executor(1)
        system.executors_up(2)
        ids = [system.executor_id(first), system.executor_id(second)]
        done = system.cli("submit", write(tmp_path / "noop.py", NOOP), "--executors", f" {ids[1]}, {ids[0]} ",
                          "--wait")
        assert done.returncode == 0, done.stdout + done.stderr
        assert system.job(done.stdout.splitlines()[0])["placement"] == [ids[1], ids[0]]
    finally:
        system.close()
