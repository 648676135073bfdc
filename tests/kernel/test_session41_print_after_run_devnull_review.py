"""Session 41, review: a blocking run whose unbuffered stdout and stderr
go to /dev/null (`python -u app.py >/dev/null 2>&1`) takes no wait for its
closed ring's notice (`_ring_exit`): writes there are never cut short, as
a regular file's are not. It waited each run (16-18 ms a run: 100 small
runs 1.84 s, 0.09 s without the wait).

The child counts the waits of five runs, its stdout and stderr on
/dev/null, the count written to a regular file."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = """
import sys
from kernel import Dataflow, run
from kernel.execution import _ring_exit
waits = []
taken = _ring_exit._take_notice
_ring_exit._take_notice = lambda: (waits.append(1), taken())
for _ in range(5):
    flow = Dataflow("null")
    flow.from_iterable(range(3)).map(lambda x: x).collect()
    run(flow)
with open(sys.argv[1], "w") as out:
    out.write(str(len(waits)))
"""


def test_no_wait_where_stdout_and_stderr_are_dev_null(tmp_path):
    said = tmp_path / "waits"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", CHILD, str(said)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=env, cwd=ROOT, timeout=60)
    assert (done.returncode, said.read_text()) == (0, "0")


def test_a_pipe_still_waits(tmp_path):
    said = tmp_path / "waits"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", CHILD, str(said)], capture_output=True, env=env,
                          cwd=ROOT, timeout=60)
    assert (done.returncode, said.read_text()) == (0, "5")
