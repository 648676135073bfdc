"""A named FIFO opened again after a failed run with a state_dir, its
writers all gone meanwhile: a fresh pipe, fed again from its start by a new
writer, over which the run resumes exactly. Taken for the stream the failed
run read (whatever held it in between), the resumed run was refused
("feed the input again through a FIFO made afresh"), every line there to
read. A writer that held the FIFO open meanwhile, started before the failed
run, still has the run over it refused: what it wrote stays in the pipe
(test_session42_live_stream_fifo_opened_again.py: a writer in this process)."""

from __future__ import annotations

import os
import select
import subprocess
import sys

import pytest
from test_session39_live_stream_resume import _committed, failing_once_at

from kernel import Dataflow, run

LINES = 50_000  # (more than the pipe, the reader's read-ahead and its file object's buffer hold)

# Writes LINES lines into the FIFO argv[1]; argv[2] "hold": a write cut short by the
# reader's close is let be, and the FIFO held open until the standard input ends.
_WRITER = """
import sys
fifo = open(sys.argv[1], "w")
try:
    fifo.write("".join(f"{i}\\n" for i in range(int(sys.argv[3]))))
    fifo.flush()
except BrokenPipeError:
    if sys.argv[2] != "hold":
        raise SystemExit(1)
if sys.argv[2] == "hold":
    sys.stdin.read()
"""


def _writer(fifo, hold: bool = False) -> subprocess.Popen:
    how = "hold" if hold else "once"
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(fifo), how, str(LINES)],
                            stdin=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


def _flow(stream, out, fails) -> Dataflow:
    flow = Dataflow("lines")
    flow.from_iterable(stream, name="lines in").map(int).map(fails).to_files(out)
    return flow


def _failed_once(fifo, out, state, marker) -> None:
    with open(fifo) as first:
        with pytest.raises(Exception, match="the first run fails here"):
            run(_flow(first, out, failing_once_at(100, marker)), state_dir=state, epoch_interval=0.001)


def test_a_run_resumes_over_a_fifo_fed_again_by_a_new_writer_once_the_first_is_gone(tmp_path):
    fifo, out, state = tmp_path / "fifo", tmp_path / "out", tmp_path / "state"
    os.mkfifo(fifo)
    first = _writer(fifo)
    _failed_once(fifo, out, state, tmp_path / "failed")
    assert first.wait(timeout=30) == 1  # (its write cut short by the closed reader: the pipe is gone)
    again = _writer(fifo)
    try:
        with open(fifo) as reopened:
            select.select([reopened], [], [], 30)  # (its writer's first lines: /proc shows it holding it)
            run(_flow(reopened, out, failing_once_at(-1, tmp_path / "never")), state_dir=state,
                epoch_interval=0.001)
        assert again.wait(timeout=30) == 0
    finally:
        again.kill()
        again.wait()
    assert sorted(_committed(out)) == list(range(LINES))


def test_a_run_over_a_fifo_a_writer_held_open_since_before_the_failed_run_is_still_refused(tmp_path):
    fifo, out, state = tmp_path / "fifo", tmp_path / "out", tmp_path / "state"
    os.mkfifo(fifo)
    holder = _writer(fifo, hold=True)
    try:
        _failed_once(fifo, out, state, tmp_path / "failed")
        with open(fifo) as reopened:
            with pytest.raises(Exception, match=r"lines in \(step 0\): an earlier run of this process read "
                                                r"lines of its input .*a FIFO"):
                run(_flow(reopened, out, failing_once_at(-1, tmp_path / "never")), state_dir=state,
                    epoch_interval=0.001)
    finally:
        holder.kill()
        holder.wait()
