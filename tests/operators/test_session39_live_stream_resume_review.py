"""Found by a review of the live-stream resume fixes: a run with a
state_dir over a stream whose lines an earlier run of this process read,
where that run left no reader holding lines (its source had read the
stream to its end), resumed over the exhausted stream, read nothing, and
committed without the lines after the last complete epoch: no error."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from _live_streams import DEADLINE

from kernel import Dataflow, run

TOTAL = 2_000


def _committed(out) -> list[int]:
    records: list[int] = []
    if out.is_dir():
        for part in sorted(out.glob("part-*")):
            records += [json.loads(line) for line in part.read_text().splitlines()]
    return records


@pytest.mark.parametrize("cores", [1, 2])
def test_a_resumed_run_over_a_stream_an_earlier_run_read_to_its_end_is_refused(tmp_path, cores):
    """The first run (one kernel) fails at the stream's last line, an epoch
    complete before: its reader read to the end and held nothing, so the
    refusal of a reader left over did not apply, and the run resumed over
    the same stream (on `cores` kernels) committed only what the snapshot
    had. Refused now, naming the source; a run over the input fed again (a
    new pipe) resumes and commits each line once."""
    out, state, marker = tmp_path / "out", tmp_path / "state", tmp_path / "failed"

    def fails_once(value):
        if value == TOTAL - 1 and not marker.exists():
            marker.touch()
            raise ValueError("the first run fails here")
        return value

    def fed(until_committed: bool):
        read, write = os.pipe()

        def writer():
            with os.fdopen(write, "w") as stream:
                stream.write("".join(f"{i}\n" for i in range(TOTAL // 2)))
                stream.flush()
                deadline = time.monotonic() + DEADLINE
                while until_committed and not _committed(out) and time.monotonic() < deadline:
                    time.sleep(0.01)  # (polled: an epoch complete before the last line)
                stream.write("".join(f"{i}\n" for i in range(TOTAL // 2, TOTAL)))

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        return os.fdopen(read), thread

    def flow_over(stream) -> Dataflow:
        flow = Dataflow("lines")
        flow.from_iterable(stream, name="lines in").map(int).map(fails_once).to_files(out)
        return flow

    stream, writer = fed(until_committed=True)
    with stream:
        with pytest.raises(Exception, match="the first run fails here"):
            run(flow_over(stream), state_dir=state, epoch_interval=0.01)
        writer.join(DEADLINE)
        assert 0 < len(_committed(out)) < TOTAL
        with pytest.raises(Exception, match=r"lines in \(step 0\): an earlier run of this process read "
                                            r"lines of its input.*give this run the input again"):
            run(flow_over(stream), state_dir=state, epoch_interval=0.01, cores=cores)
    again, writer = fed(until_committed=False)
    with again:
        run(flow_over(again), state_dir=state, epoch_interval=0.01, cores=cores)
    writer.join(DEADLINE)
    assert sorted(_committed(out)) == list(range(TOTAL))
