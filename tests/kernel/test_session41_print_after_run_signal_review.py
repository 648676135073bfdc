"""Session 41, review: a blocking run's wait for its closed ring's notice
(`_ring_exit._take_notice`) is not ended by a real signal that comes first.

A signal with a handler (a sampling profiler's or a timeout's SIGALRM, a
SIGCHLD handler's, a Ctrl-C) interrupted the wait's epoll_wait as the
notice does; it returned, and the notice came 10-20 ms later, in the
user's next write: `print(big)` after a run with a 2 ms SIGALRM timer, to a
slow pipe with PYTHONUNBUFFERED=1, lost all but 65,536 of 300,000 bytes,
every time. Real signals are blocked while it waits (epoll_pwait), and
delivered as it returns.

The child runs a flow with a 2 ms SIGALRM timer going, stops the timer,
then waits a while in a call the notice would interrupt (epoll_pwait,
every signal blocked): the notice taken by the run, nothing interrupts it.
"""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = """
import ctypes, select, signal, sys
from kernel import Dataflow, run
ticks = []
signal.signal(signal.SIGALRM, lambda *a: ticks.append(1))
signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)
flow = Dataflow("after")
flow.from_iterable(range(3)).map(lambda x: x).collect()
run(flow)
signal.setitimer(signal.ITIMER_REAL, 0)
libc = ctypes.CDLL(None, use_errno=True)
blocked = ctypes.create_string_buffer(b"\\xff" * 128, 128)
with select.epoll() as empty:
    got = libc.epoll_pwait(empty.fileno(), ctypes.create_string_buffer(16), 1, 300, blocked)
sys.stderr.write("notice after the run" if got < 0 else "quiet")
"""


def test_a_signal_during_the_wait_does_not_leave_the_notice_for_later():
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, env=env, cwd=ROOT,
                          timeout=60)
    assert (done.returncode, done.stderr.decode()[-500:]) == (0, "quiet")
