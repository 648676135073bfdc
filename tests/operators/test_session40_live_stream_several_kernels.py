"""`from_iterable` over a live stream with a `state_dir`, after a run of
the same process on several kernels over the same stream: kernel 0's
process read it, and the process that started the runs never learnt that
lines were gone from it. A run resuming over the stream in that process
counted what was left of it from the stream's start, and lost lines with
no error. Kernel 0 now tells the launcher before it reads such a stream,
and the later run is refused as after a run on one kernel."""

from __future__ import annotations

import os

import pytest
from _live_streams import DEADLINE
from test_session39_live_stream_resume import TOTAL, _committed, _fed, failing_once_at

from kernel import Dataflow, run


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("exchanged", [False, True])
def test_a_run_resumed_over_a_stream_a_run_on_several_kernels_read_is_refused(tmp_path, cores, exchanged):
    """Run 1, on 2 kernels, fails at line TOTAL // 2, epochs complete before
    (`exchanged`: after a key_by, on kernel 1, and kernel 0 is killed).
    A run on `cores` kernels in the same process over the same stream, with
    the state_dir, resumed and committed without the lines kernel 0 had
    read after the last complete epoch, no error. Refused now, naming the
    source; over the input fed again (a new pipe) the resumed run commits
    every line exactly once."""
    out, state, marker = tmp_path / "out", tmp_path / "state", tmp_path / "failed"

    fails_once = failing_once_at(TOTAL // 2, marker)

    def flow_over(stream) -> Dataflow:
        flow = Dataflow("lines")
        values = flow.from_iterable(stream, name="lines in").map(int)
        if exchanged:
            values = values.key_by(lambda v: v % 2).map(lambda pair: pair[1])
        values.map(fails_once).to_files(out)
        return flow

    stream, writer = _fed(out, slowly=True)
    with stream:
        with pytest.raises(Exception, match="the first run fails here"):
            run(flow_over(stream), state_dir=state, epoch_interval=0.01, cores=2)
        writer.join(DEADLINE)
        assert 0 < len(_committed(out)) < TOTAL
        with pytest.raises(Exception, match=r"lines in \(step 0\): an earlier run of this process read "
                                            r"lines of its input.*give this run the input again"):
            run(flow_over(stream), state_dir=state, epoch_interval=0.01, cores=cores)
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as again:  # (3,000 short lines: within the pipe's buffer)
        again.write("".join(f"{i}\n" for i in range(TOTAL)))
    with os.fdopen(read_end) as stream:
        run(flow_over(stream), state_dir=state, epoch_interval=0.01, cores=cores)
    committed = _committed(out)
    assert sorted(committed) == list(range(TOTAL))
    assert len(committed) == TOTAL
