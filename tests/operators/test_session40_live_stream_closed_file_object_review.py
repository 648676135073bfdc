"""`from_iterable` over a live stream with a `state_dir`, after a run of the
same process read it through another file object of it that was closed
since (a dup of its descriptor: `open("/dev/stdin")`, then `sys.stdin`).
The record of the streams a run took lines of dropped a stream's entry
with the file object noted, so the run over the stream itself was not
refused, resumed, and lost the lines the earlier run had read after its
last complete epoch (2,740 of 3,000, no error). An anonymous pipe's entry
now stands while any descriptor of it is open; a named FIFO's still goes
with its file object (reopened, it is a stream fed anew)."""

from __future__ import annotations

import os
import threading

import pytest
from _live_streams import DEADLINE
from test_session39_live_stream_resume import TOTAL, _committed, _fed, failing_once_at

from kernel import Dataflow, run
from operators import _live_input


def _flow_over(stream, out, fails_once=None) -> Dataflow:
    flow = Dataflow("lines")
    values = flow.from_iterable(stream, name="lines in").map(int)
    if fails_once is not None:
        values = values.map(fails_once)
    values.to_files(out)
    return flow


def test_a_run_over_a_stream_an_earlier_run_read_through_a_closed_dup_of_it_is_refused(tmp_path):
    out, state, marker = tmp_path / "out", tmp_path / "state", tmp_path / "failed"

    fails_once = failing_once_at(TOTAL // 2, marker)

    stream, writer = _fed(out, slowly=True)
    with stream:
        with os.fdopen(os.dup(stream.fileno())) as other:
            with pytest.raises(Exception, match="the first run fails here"):
                run(_flow_over(other, out, fails_once), state_dir=state, epoch_interval=0.01)
        writer.join(DEADLINE)
        assert 0 < len(_committed(out)) < TOTAL
        with pytest.raises(Exception, match=r"lines in \(step 0\): an earlier run of this process read "
                                            r"lines of its input.*give this run the input again"):
            run(_flow_over(stream, out, fails_once), state_dir=state, epoch_interval=0.01)
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as again:  # (3,000 short lines: within the pipe's buffer)
        again.write("".join(f"{i}\n" for i in range(TOTAL)))
    with os.fdopen(read_end) as fed_again:
        run(_flow_over(fed_again, out, fails_once), state_dir=state, epoch_interval=0.01)
    committed = _committed(out)
    assert sorted(committed) == list(range(TOTAL))
    assert len(committed) == TOTAL


def test_a_named_fifo_reopened_is_a_fresh_stream_and_closed_pipes_are_not_kept(tmp_path):
    """Each run over the FIFO, opened anew for a writer of its own, reads
    it whole (its inode is the same: not refused); and runs over pipes
    closed after leave no entry each for long."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for attempt in range(3):
        def writer():
            with open(fifo, "w") as fed:
                fed.write("".join(f"{i}\n" for i in range(100)))

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        with open(fifo) as stream:
            run(_flow_over(stream, tmp_path / f"out{attempt}"), state_dir=tmp_path / f"state{attempt}")
        thread.join(DEADLINE)
        assert sorted(_committed(tmp_path / f"out{attempt}")) == list(range(100))
    for attempt in range(_live_input._KEPT_CLOSED + 10):
        read_end, write_end = os.pipe()
        with os.fdopen(write_end, "w") as fed:
            fed.write("1\n2\n")
        with os.fdopen(read_end) as stream:
            run(_flow_over(stream, tmp_path / f"pipe{attempt}"))
    # (up to _KEPT_CLOSED closed ones wait to be looked up, and the last run's)
    assert len(_live_input._taken_from) <= _live_input._KEPT_CLOSED + 1
