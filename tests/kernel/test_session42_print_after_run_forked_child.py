"""Output printed right after a blocking run one of whose steps forked a
process without exec (`os.fork()`), into a pipe read slowly, unbuffered.

The forked process held the loop's io_uring ring (its copy of the ring's
descriptor and of its memory mappings): the ring's teardown, and its notice
to the thread that used it (`_ring_exit.py`), came when that process ended,
not as the run's loop closed, after `_take_notice` had stopped waiting; a
print of the caller's waiting in the full pipe then returned short, and an
unbuffered stdout dropped the rest: 65,536 of 300,000 bytes. A forked
process now holds no reference to the ring (its mappings are not copied, its
descriptors of it become /dev/null), so the notice comes at the loop's close."""

from __future__ import annotations

import os
import subprocess
import sys

from test_session41_print_after_run import HELD, ROOT, SIZE, _until_full

CHILD = """
import os, sys, time
from kernel import Dataflow, run
marker = sys.argv[1]

def forks(value):
    if value == 0 and os.fork() == 0:  # (a process of its own, ending once told, after the run)
        deadline = time.monotonic() + 30
        while not os.path.exists(marker) and time.monotonic() < deadline:
            time.sleep(0.005)
        os._exit(0)
    return value

flow = Dataflow("forks")
flow.from_iterable(range(3)).map(forks).collect()
run(flow)
sys.stdout.write("x" * int(sys.argv[2]))
sys.stdout.flush()
"""


def test_every_byte_printed_after_a_run_whose_step_forked_reaches_a_slow_pipe(tmp_path):
    marker = tmp_path / "end now"
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), str(SIZE)], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        _until_full(child.stdout.fileno(), child)  # (the print waits in the full pipe)
        marker.touch()  # (the forked process ends: its reference to the ring goes)
        try:  # (a slow reader meanwhile: the notice, where it comes, cuts the waiting write short)
            child.wait(timeout=HELD)
        except subprocess.TimeoutExpired:
            pass
        got = len(child.stdout.read())
    finally:
        marker.touch()
    assert child.wait(timeout=60) == 0
    assert got == SIZE
