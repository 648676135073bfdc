"""A second review of the session's wheel review (test_session27_wheel_review):

- the system's client commands end quietly with 141 when stdout's reader
  has gone only where they flush stdout themselves: `status`, `status
  --json`, `kill` and `--help` print into stdout's buffer, which a pipe's
  stdout flushes only at exit (a user's Python, without
  PYTHONUNBUFFERED), past the command's BrokenPipeError handler: they
  ended `Exception ignored in: <_io.TextIOWrapper name='<stdout>'...>
  BrokenPipeError`, exit 120."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "system"))

from _system import System, a_system

SLOW = """\
import threading
from kernel import Dataflow

flow = Dataflow("slow")
flow.from_iterable(range(1)).map(lambda n: threading.Event().wait(60)).print()
"""


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    root = tmp_path_factory.mktemp("system")
    (root / "slow.py").write_text(SLOW)
    with a_system(root) as system:
        yield system


def buffered_cli_into_a_closed_pipe(system: System, *args: str) -> tuple[int, str]:
    """The command as a user's shell runs it, stdout block-buffered (no
    PYTHONUNBUFFERED), into a pipe whose reader has gone (`| true`)."""
    env = {k: v for k, v in system.env.items() if k != "PYTHONUNBUFFERED"}
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-m", "kernel", *args], stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=60, env=env, cwd=system.root)
    finally:
        os.close(write)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["kill"], ["--help"],
                                  ["status", "--help"]],
                         ids=["status", "status-json", "kill", "help", "status-help"])
def test_a_buffered_client_command_whose_reader_went_away_ends_quietly_with_141(system, args):
    if args == ["kill"]:
        submitted = system.cli("submit", "slow.py")
        assert submitted.returncode == 0, submitted.stderr
        args = ["kill", submitted.stdout.split()[0]]
    assert buffered_cli_into_a_closed_pipe(system, *args) == (141, "")
    if args[0] == "kill":  # killed all the same
        assert {j["id"]: j["status"] for j in system.status()["jobs"]}[args[1]] == "killed"

