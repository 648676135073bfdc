"""`from_iterable` over a terminal with a `state_dir` (the standard input
of a program one types lines into), after a run of the same process read
it through another file object of it (`sys.stdin`, then `open(0)`). A
character device's file objects were each a stream of their own (by the
file object), so that run was not refused: it resumed, skipping what the
earlier run had committed of what is typed after, while the earlier run's
reader, left waiting in a read of the terminal, took lines too (302 of
600 lost, no error). A character device is now one stream by its inode,
as a pipe, a socket or a regular file is."""

from __future__ import annotations

import os
import pty
import termios
import threading
import time

import pytest
from _live_streams import DEADLINE
from test_session39_live_stream_resume import _committed, failing_once_at
from test_session40_live_stream_closed_file_object_review import _flow_over

from kernel import Dataflow, run

TOTAL = 600


def test_a_run_over_another_file_object_of_a_terminal_an_earlier_run_read_is_refused(tmp_path):
    out, state, marker = tmp_path / "out", tmp_path / "state", tmp_path / "failed"

    fails_once = failing_once_at(TOTAL // 2, marker)

    typing, terminal = pty.openpty()
    modes = termios.tcgetattr(terminal)
    modes[3] &= ~termios.ECHO  # (nothing written back for the test to read)
    termios.tcsetattr(terminal, termios.TCSANOW, modes)

    def types():  # (a line at a time until an epoch is committed: the failure comes after it)
        deadline = time.monotonic() + DEADLINE
        for i in range(TOTAL):
            os.write(typing, f"{i}\n".encode())
            if not _committed(out) and time.monotonic() < deadline:
                time.sleep(0.004)

    thread = threading.Thread(target=types, daemon=True)
    thread.start()
    first, second = os.fdopen(os.dup(terminal)), os.fdopen(os.dup(terminal))
    try:
        with pytest.raises(Exception, match="the first run fails here"):
            run(_flow_over(first, out, fails_once), state_dir=state, epoch_interval=0.01)
        thread.join(DEADLINE)
        assert 0 < len(_committed(out)) < TOTAL
        refused = threading.Event()

        def ends_typing():  # (a run not refused would wait for lines for ever: the end, typed)
            if not refused.wait(DEADLINE / 2):
                for _ in range(4):  # (one for each reader waiting)
                    os.write(typing, b"\x04")
                    time.sleep(0.05)

        threading.Thread(target=ends_typing, daemon=True).start()
        try:
            with pytest.raises(Exception, match=r"lines in \(step 0\): an earlier run of this process read "
                                                r"lines of its input.*give this run the input again"):
                run(_flow_over(second, out, fails_once), state_dir=state, epoch_interval=0.01)
        finally:
            refused.set()
    finally:
        os.write(typing, b"\x04")  # (the end of what is typed: the reader left waiting reads it)
        deadline = time.monotonic() + DEADLINE
        while any(t.name.startswith("lines in") and t.is_alive() for t in threading.enumerate()):
            if time.monotonic() > deadline:
                break
            time.sleep(0.005)
        first.close()
        second.close()
        os.close(terminal)
        os.close(typing)
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as again:  # (600 short lines: within the pipe's buffer)
        again.write("".join(f"{i}\n" for i in range(TOTAL)))
    with os.fdopen(read_end) as fed_again:
        run(_flow_over(fed_again, out, fails_once), state_dir=state, epoch_interval=0.01)
    committed = _committed(out)
    assert sorted(committed) == list(range(TOTAL))
    assert len(committed) == TOTAL


def test_two_file_objects_of_dev_null_are_not_one_stream(tmp_path):
    """Other character devices are not keyed by their inode: two sources
    over /dev/null, each opened anew, are not refused as two iterators of
    one stream (keyed by the inode, they were)."""
    got: list = []
    with open(os.devnull) as one, open(os.devnull) as other:
        flow = Dataflow("nothing")
        flow.from_iterable(one, name="one").union(flow.from_iterable(other, name="other")).sink(got.append)
        run(flow, state_dir=tmp_path / "state")
    assert got == []
