"""`from_iterable` over a live stream with a `state_dir`, after a run of the
same process that failed once its reader had read ahead, its source having
taken no line: the lines that reader holds wait for a run over the same
iterator, which takes it over. A run over the stream through another
iterator (its `buffer`, a generator over it, the stream itself after a
`map` over it) got a reader of its own: nothing refused it (the stream
was not among those a run took lines of), and it lost what the reader had
read ahead, up to 3,000 of 3,000 lines, no error. Refused now; the run
over the first iterator still resumes exactly."""

from __future__ import annotations

from collections import Counter

import pytest
from test_session39_live_stream_resume import TOTAL, _committed
from test_session40_live_stream_read_ahead import _FailsAtFirstPoll, _Gate, failed_having_read_ahead

from kernel import Dataflow, run


@pytest.mark.parametrize("other", ["buffer", "generator", "stream"])
def test_a_run_over_another_iterator_of_a_stream_a_failed_run_read_ahead_of_is_refused(tmp_path, other):
    out, state = tmp_path / "out", tmp_path / "state"

    def flow_over(lines) -> Dataflow:
        flow = Dataflow("lines")
        flow.source(lambda: _FailsAtFirstPoll(lines), name="lines in").map(int).to_files(out)
        flow.source(_Gate, name="gate").to_files(tmp_path / "gate")
        return flow

    with failed_having_read_ahead(flow_over, state) as (stream, lines):
        through = {"buffer": lambda: stream.buffer, "generator": lambda: (line for line in stream),
                   "stream": lambda: stream}[other]()
        with pytest.raises(Exception, match=r"lines in \(step 0\): an earlier run of this process over "
                                            r"its input.*another iterator or file object of it"):
            run(flow_over(through), state_dir=state, epoch_interval=0.01)
        assert _committed(out) == []
        run(flow_over(lines), state_dir=state, epoch_interval=0.01)
    committed = _committed(out)
    assert sorted(committed) == list(range(TOTAL))
    assert [value for value, count in Counter(committed).items() if count > 1] == []
