"""A named FIFO opened again by this process after a run over a first file
object of it ended early. While a writer holds the FIFO open it is one
stream, whatever file objects read it: what the first file object and its
reader had read ahead is gone from it. A run without a state_dir over the
FIFO opened again got none of the 3,000 lines the earlier run's reader held
(and, a reader cut mid-line, a torn line first: `-0000005128-end`), no error;
a run with a state_dir over it, after the first file object was closed,
resumed and lost them too. Both are refused now. Opened twice in one run,
the FIFO is two file objects of one stream (refused:
test_session42_live_stream_two_file_objects.py)."""

from __future__ import annotations

import os

import pytest
from test_session39_live_stream_resume import TOTAL, _committed, failing_once_at

from kernel import Dataflow, run


@pytest.fixture
def fifo(tmp_path):
    """A FIFO holding lines 0 .. TOTAL - 1, and the descriptor of its writer
    (opened read-write: the FIFO stays one stream while it is open)."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    writer = os.open(path, os.O_RDWR)
    os.write(writer, "".join(f"{i}\n" for i in range(TOTAL)).encode())  # (within the pipe's buffer)
    yield path, writer
    try:
        os.close(writer)
    except OSError:  # (closed by the test)
        pass


def _opened_again(path):
    """The FIFO `path` opened for reading, whether a writer holds it open or not
    (a plain open waits for one)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor)


def _flow(stream, out, fails) -> Dataflow:
    flow = Dataflow("lines")
    flow.from_iterable(stream, name="lines in").map(int).map(fails).to_files(out)
    return flow


def test_the_fifo_opened_twice_in_one_run_is_refused(fifo):
    path, _writer = fifo
    with open(path) as first, open(path) as second:
        flow = Dataflow("twice")
        flow.from_iterable(first, name="one").union(flow.from_iterable(second, name="two")).collect()
        with pytest.raises(Exception, match=r"two \(step 1\): .*one \(step 0\) of this run reads the same "
                                            r"stream through another file object"):
            run(flow)


def test_a_run_over_the_fifo_opened_again_while_an_earlier_run_s_reader_holds_its_lines_is_refused(
        fifo, tmp_path):
    """Run 1 fails at line 100, its reader having read every line; a run
    without a state_dir over the FIFO opened again is refused, naming the
    reader; the first file object takes that reader over, and every line
    after those run 1 handed on comes."""
    path, writer = fifo
    out = tmp_path / "out"
    with open(path) as first:
        with pytest.raises(Exception, match="the first run fails here"):
            run(_flow(first, out, failing_once_at(100, tmp_path / "failed")))
        os.close(writer)  # (the end, once what the FIFO holds is read: no run waits for ever)
        with _opened_again(path) as again:
            with pytest.raises(Exception, match=r"lines in \(step 0\): an earlier run of this process over "
                                                r"its input .*another iterator or file object of it"):
                run(_flow(again, tmp_path / "again", failing_once_at(-1, tmp_path / "never")))
        run(_flow(first, out, failing_once_at(-1, tmp_path / "never")))
    committed = _committed(out)
    assert committed[-1] == TOTAL - 1 and len(committed) == len(set(committed)) > TOTAL // 2


def test_a_run_with_a_state_dir_over_the_fifo_opened_again_after_the_first_closed_is_refused(
        fifo, tmp_path):
    """Run 1 with a state_dir fails at line TOTAL // 2, epochs complete
    before; its file object closed while the writer holds the FIFO open, a
    resumed run over the FIFO opened again would count what is left of the
    stream from its start: refused, saying so. (A FIFO read to its end, its
    writers gone, is a fresh stream opened again: not refused,
    test_session40_live_stream_closed_file_object_review.py.)"""
    path, writer = fifo
    out, state = tmp_path / "out", tmp_path / "state"
    fails = failing_once_at(TOTAL // 2, tmp_path / "failed")

    def slowly(value):  # (epochs complete before the failure)
        if value % 50 == 0:
            os.sched_yield()
        return fails(value)

    with open(path) as first:
        with pytest.raises(Exception, match="the first run fails here"):
            run(_flow(first, out, slowly), state_dir=state, epoch_interval=0.001)
        # (more lines than a chunk its reader's thread may be reading: its read
        # returns, and the file object can close; the writer stays: one stream)
        os.write(writer, "".join(f"{i}\n" for i in range(TOTAL, 3 * TOTAL)).encode())
    with open(path) as again:
        os.close(writer)  # (the end, once what the FIFO holds is read)
        with pytest.raises(Exception, match=r"lines in \(step 0\): an earlier run of this process read lines "
                                            r"of its input .*a FIFO"):
            run(_flow(again, out, slowly), state_dir=state, epoch_interval=0.001)
