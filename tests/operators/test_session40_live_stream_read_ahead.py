"""`from_iterable` over a live stream with a `state_dir`: a run that failed
after its reader had read ahead of its source, which had taken no line of
the stream. Nothing of the stream is lost (what was read waits in the
reader, which the next run over the iterator takes over), yet the refusal
of a reader left over holding lines refused the run resuming over it; the
refusal of a stream an earlier run took lines of (`_taken_from`) covers
every loss that one did, and is the one kept."""

from __future__ import annotations

import contextlib
import os
import threading
from collections import Counter

import pytest
from _live_streams import DEADLINE
from test_session39_live_stream_resume import TOTAL, _committed, _fed, failing_once_at

from kernel import Dataflow, Source, run
from operators._sources import IterableSource


class _Gate(Source):
    """A source of no records that, as `mode` says: sleeps (the run ends
    otherwise) or ends; "fail": sleeps, and the live source fails the run
    (`_FailsAtFirstPoll`)."""

    mode = "sleep"
    read = threading.Event()

    def open(self, context):
        pass

    def on_epoch(self, epoch):
        return None

    def restore(self, snapshot):
        pass

    def poll(self):
        if _Gate.mode == "end":
            return False
        return None


class _FailsAtFirstPoll(IterableSource):
    """`from_iterable`'s source that, while `_Gate.mode` is "fail", fails
    the run in its first poll once its reader has read ahead (`read` is
    set): it has taken nothing. (Failed by the gate, waiting in its own
    poll in the same tick, this source could be polled again first and
    take lines, the reader having read them already: 3 runs in 9 of this
    and the other live-stream tests in one process.)"""

    def poll(self):
        first = self._live is None
        more = super().poll()
        if first and _Gate.mode == "fail":
            _Gate.read.wait(DEADLINE)
            raise ValueError("fails before the source took a line")
        return more


def _told(stream, read: threading.Event):
    """The lines of `stream` (`map`, which `from_iterable` sees reading
    it); `read` is set as the second is read: the reader has the first."""
    seen = []

    def tell(line):
        if seen:
            read.set()
        seen.append(None)
        return line

    return map(tell, stream)


@contextlib.contextmanager
def failed_having_read_ahead(flow_over, state):
    """A run of `flow_over(lines)` with the state_dir `state`, over a pipe fed
    TOTAL lines at once, failed once its reader had read ahead, its source
    having taken none (`_FailsAtFirstPoll`, `_Gate`): `(stream, lines)`, the
    pipe's file object and the iterator over it that run read, still open."""
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as fed:  # (3,000 short lines: within the pipe's buffer)
        fed.write("".join(f"{i}\n" for i in range(TOTAL)))
    read = _Gate.read = threading.Event()
    with os.fdopen(read_end) as stream:
        lines = _told(stream, read)
        _Gate.mode = "fail"
        with pytest.raises(Exception, match="fails before the source took a line"):
            run(flow_over(lines), state_dir=state, epoch_interval=0.01)
        assert read.is_set()  # (the reader had read ahead as the run failed)
        _Gate.mode = "end"
        yield stream, lines


def test_a_run_resumed_over_a_stream_the_failed_run_read_ahead_of_but_took_nothing_of(tmp_path):
    """Run 1 over a pipe fails at line TOTAL // 2, epochs complete before.
    Run 2 over the input fed again (a new pipe) resumes from them and fails
    after its reader read ahead (in the live source's first poll, which
    waits until it has, so it has taken nothing).
    Run 3, in the same process over the same iterator, was refused (the
    reader left over holds lines); it now takes the reader over and commits
    every line of the input exactly once."""
    out, state, marker = tmp_path / "out", tmp_path / "state", tmp_path / "failed"

    fails_once = failing_once_at(TOTAL // 2, marker)

    def flow_over(lines) -> Dataflow:
        flow = Dataflow("lines")
        flow.source(lambda: _FailsAtFirstPoll(lines), name="lines in").map(int).map(fails_once).to_files(out)
        flow.source(_Gate, name="gate").to_files(tmp_path / "gate")
        return flow

    first, writer = _fed(out, slowly=True)
    with first:
        with pytest.raises(Exception, match="the first run fails here"):
            run(flow_over(first), state_dir=state, epoch_interval=0.01)
    writer.join(DEADLINE)
    assert 0 < len(_committed(out)) < TOTAL

    with failed_having_read_ahead(flow_over, state) as (_, lines):
        run(flow_over(lines), state_dir=state, epoch_interval=0.01)
    committed = _committed(out)
    assert sorted(committed) == list(range(TOTAL))
    assert [value for value, count in Counter(committed).items() if count > 1] == []
