"""A run with a `state_dir` over a live stream, after a run of the same
process took lines of it through another file object of it
(`stream.buffer`, as `sys.stdin.buffer` after `sys.stdin`, or a dup of its
descriptor): the refusal of a stream an earlier run read knew it by its
file object, so the resumed run counted what was left of the stream from
its start, and lost lines with no error (2,960 of 3,000)."""

from __future__ import annotations

import os

import pytest
from _live_streams import DEADLINE
from test_session39_live_stream_resume import TOTAL, _committed, _fed, failing_once_at

from kernel import Dataflow, run


@pytest.mark.parametrize("second", ["buffer", "dup"])
def test_a_run_resumed_over_another_file_object_of_a_stream_an_earlier_run_read_is_refused(tmp_path, second):
    """Run 1 over `stream` fails at line TOTAL // 2, epochs complete before;
    a run over `second`, another file object of the stream, is refused
    now, naming the source; over the input fed again (a new pipe) the
    resumed run commits every line exactly once."""
    out, state, marker = tmp_path / "out", tmp_path / "state", tmp_path / "failed"

    fails_once = failing_once_at(TOTAL // 2, marker)

    def flow_over(stream) -> Dataflow:
        flow = Dataflow("lines")
        flow.from_iterable(stream, name="lines in").map(int).map(fails_once).to_files(out)
        return flow

    stream, writer = _fed(out, slowly=True)
    with stream:
        with pytest.raises(Exception, match="the first run fails here"):
            run(flow_over(stream), state_dir=state, epoch_interval=0.01)
        writer.join(DEADLINE)
        assert 0 < len(_committed(out)) < TOTAL
        other = stream.buffer if second == "buffer" else os.fdopen(os.dup(stream.fileno()), "rb")
        try:
            with pytest.raises(Exception, match=r"lines in \(step 0\): an earlier run of this process "
                                                r"read lines of its input.*give this run the input again"):
                run(flow_over(other), state_dir=state, epoch_interval=0.01)
        finally:
            if other is not stream.buffer:
                other.close()
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as again:  # (3,000 short lines: within the pipe's buffer)
        again.write("".join(f"{i}\n" for i in range(TOTAL)))
    with os.fdopen(read_end) as fed_again:
        run(flow_over(fed_again), state_dir=state, epoch_interval=0.01)
    committed = _committed(out)
    assert sorted(committed) == list(range(TOTAL))
    assert len(committed) == TOTAL
