"""A process a step of a blocking run forks without exec that goes on from
the step rather than ending with `os._exit` (`sys.exit()` in it, an
exception). Since its copy of the loop lost the ring's memory (MADV_DONTFORK,
so that the parent's ring is not held by it: _ring_exit.py), libuv's next
epoll_ctl batch through that memory killed it with SIGSEGV, where it had
ended with its run failing, status 0. Its loop now does without the ring
(plain epoll_ctl); the parent's run and its output are untouched."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = """
import os, sys
from kernel import Dataflow, run

def forks(value):
    if value == 0:
        child = os.fork()
        if child == 0:
            if sys.argv[1] == "exit":
                sys.exit(0)  # (the child goes on from here through its copy of the run)
            raise ValueError("raised in the forked child")
        sys.stdout.write(f"child ended {os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])}\\n")
        sys.stdout.flush()
    return value

flow = Dataflow("forks")
out = flow.from_iterable(range(3)).map(forks).collect()
try:
    run(flow)
except Exception:
    os._exit(0)  # (the forked child, its copy of the run failed: as the step's function raised)
sys.stdout.write(f"parent {sorted(out.items)}\\n")
"""


@pytest.mark.parametrize("how", ["exit", "raise"])
def test_a_forked_child_going_on_from_the_step_ends_without_a_crash(how):
    done = subprocess.run([sys.executable, "-c", CHILD, how], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["child ended 0", "parent [0, 1, 2]"]
