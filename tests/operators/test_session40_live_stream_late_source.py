"""Two sources of a run over one live stream, the second polled first only
after an epoch that followed the first's take (seen under load: a slice
that ended before its first poll, 1 run in 150 of a stress). Its snapshot
then holds the stream's position through the reader the other source
started (`IterableSource.on_epoch`, `LiveReader.of_run`), not its own 0,
which a resumed run would skip by, handing on again what the other source
had handed on. Here that source's first poll is held back until then."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from test_session39_live_stream_resume import TOTAL, _committed

from kernel import Dataflow, run
from operators._sources import IterableSource


class _Late(IterableSource):
    """`from_iterable`'s source, whose first poll waits (`held`) for an epoch
    snapshotted after the other source took lines (`taken`) to be
    committed, and then fails the run."""

    held = False
    taken: list = []

    def open(self, context):
        super().open(context)
        self._released_at = None
        self._committed = False

    def on_epoch(self, epoch):
        snapshot = super().on_epoch(epoch)
        if self._released_at is None and _Late.taken:
            self._released_at = epoch
        return snapshot

    def on_commit(self, epoch):
        if self._released_at is not None and epoch >= self._released_at:
            self._committed = True

    def poll(self):
        if _Late.held:  # (polled again, not yet reading, until that epoch is committed)
            if self._committed:
                raise ValueError("the first run fails here")
            return True
        return super().poll()


def test_a_source_first_polled_after_an_epoch_the_other_source_took_lines_before_resumes_exactly(tmp_path):
    """Run 1: the first source takes lines (all of them, likely), an epoch
    is snapshotted with the late source not yet polled, committed, and the
    late source fails the run. Run 2, over the input fed again, resumes
    from it: each of the 3,000 lines committed once."""
    out, state = tmp_path / "out", tmp_path / "state"

    def note_taken(value):
        if not _Late.taken:
            _Late.taken.append(value)
        return value

    for attempt in range(2):
        read_end, write_end = os.pipe()
        with os.fdopen(write_end, "w") as fed:  # (3,000 short lines: within the pipe's buffer)
            fed.write("".join(f"{i}\n" for i in range(TOTAL)))
        with os.fdopen(read_end) as stream:
            _Late.held, _Late.taken = attempt == 0, []
            flow = Dataflow("lines")
            first = flow.from_iterable(stream, batch_size=100, name="first").map(int).map(note_taken)
            late = flow.source(lambda stream=stream: _Late(stream, 100), name="late").map(int)
            first.union(late).to_files(out)
            if attempt == 0:
                with pytest.raises(Exception, match="the first run fails here"):
                    run(flow, state_dir=state, epoch_interval=0.01)
                assert _committed(out)  # (resumed from that epoch, not from the start)
            else:
                run(flow, state_dir=state, epoch_interval=0.01)
    committed = _committed(out)
    assert [value for value, count in Counter(committed).items() if count > 1] == []
    assert sorted(committed) == list(range(TOTAL))
