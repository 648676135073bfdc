"""`from_iterable(open("/dev/tty"))` with a `state_dir` after a run of the
same process read its controlling terminal through `sys.stdin` (or any file
object of `/dev/pts/N`). A terminal was one stream by its inode, and
`/dev/tty` is a device of its own (5, 0, its own inode) that reads the
process's controlling terminal: that run was not refused, and resumed
over what was left of the terminal (the earlier run's lines gone). The
terminal is now the device the descriptor reads (TIOCGDEV)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import termios

from _live_streams import DEADLINE

_CHILD = r"""
import os, sys
from kernel import Dataflow, run
terminal = os.open(sys.argv[1], os.O_RDWR)  # (a session's first terminal: its controlling one)

def over(stream, state_dir=None):
    got = []
    flow = Dataflow("lines")
    flow.from_iterable(stream, name="lines in").map(int).sink(got.append)
    run(flow, state_dir=state_dir)
    return got

with os.fdopen(terminal) as typed:
    print("first", over(typed), flush=True)  # (to its end: what is typed up to a Ctrl-D)
    with open("/dev/tty") as controlling:
        try:
            print("second", over(controlling, sys.argv[2]), flush=True)
        except Exception as exc:
            print("refused", str(exc).splitlines()[0], flush=True)
"""


def test_a_run_over_dev_tty_after_a_run_over_the_terminal_it_reads_is_refused(tmp_path):
    typing, terminal = pty.openpty()
    try:
        modes = termios.tcgetattr(terminal)
        modes[3] &= ~termios.ECHO  # (nothing written back)
        termios.tcsetattr(terminal, termios.TCSANOW, modes)
        # (what each run reads, up to its end, typed before: a second run not refused reads 3)
        os.write(typing, b"1\n2\n\x043\n\x04")
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, os.ttyname(terminal), str(tmp_path / "state")],
            start_new_session=True, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=DEADLINE * 3, cwd=os.getcwd(),
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    finally:
        os.close(terminal)
        os.close(typing)
    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    assert lines[0] == "first [1, 2]"
    assert lines[1].startswith("refused lines in (step 0): an earlier run of this process read lines of "
                               "its input"), lines
