"""`from_iterable` over a live stream with a `state_dir`: several sources of
a run over one stream, the run failing and resumed over the stream fed
again. Each wait has a deadline: a hang fails its test."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter

import pytest
from _live_streams import DEADLINE

from kernel import Dataflow, run

TOTAL = 3_000


def _committed(out) -> list[int]:
    records: list[int] = []
    if out.is_dir():
        for part in sorted(out.glob("part-*")):
            records += [json.loads(line) for line in part.read_text().splitlines()]
    return records


def failing_once_at(value_at: int, marker):
    """A step's function that raises at the record `value_at` in the first
    run only (the file `marker` made as it does), as a run fails once."""

    def fails_once(value):
        if value == value_at and not marker.exists():
            marker.touch()
            raise ValueError("the first run fails here")
        return value

    return fails_once


def _fed(out, slowly: bool):
    """A pipe's read end, a thread writing TOTAL lines to it. `slowly`: in
    bursts of a few lines, until what `to_files` committed into `out`
    holds some of them (an epoch is complete), then the rest at once."""
    read, write = os.pipe()

    def writer():
        with os.fdopen(write, "w") as stream:
            at = 0
            if slowly:
                deadline = time.monotonic() + DEADLINE
                while at < TOTAL - 100 and not _committed(out) and time.monotonic() < deadline:
                    stream.write("".join(f"{i}\n" for i in range(at, at + 10)))
                    stream.flush()
                    at += 10
                    time.sleep(0.005)
            stream.write("".join(f"{i}\n" for i in range(at, TOTAL)))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    return os.fdopen(read), thread


@pytest.mark.parametrize("cores", [(1, 1), (2, 2), (3, 3), (2, 1), (1, 3)])
def test_sources_of_one_stream_resumed_over_it_fed_again_commit_each_line_once(tmp_path, cores):
    """Each source snapshotted its own count of the lines it had taken,
    and which source takes which line of the stream depends on timing: the
    resumed run, each source skipping its count of the stream fed again,
    committed some lines twice and lost others. Now each snapshots the
    stream's position (the lines all its sources took), and skips by it.
    `cores`: the kernels of the failing run and of the resumed one."""
    out, marker = tmp_path / "out", tmp_path / "failed"

    fails_once = failing_once_at(TOTAL - 1, marker)

    for attempt in range(2):
        stream, writer = _fed(out, slowly=attempt == 0)
        with stream:
            flow = Dataflow("lines")
            # (batch sizes that differ: the lines' split between the sources
            # differs between the two runs' timings)
            one = flow.from_iterable(stream, batch_size=1).map(int)
            other = flow.from_iterable(stream, batch_size=500).map(int)
            values = one.union(other).map(fails_once)
            values.key_by(lambda v: v % 3).map(lambda pair: pair[1]).to_files(out)
            if attempt == 0:
                with pytest.raises(Exception, match="the first run fails here"):
                    run(flow, state_dir=tmp_path / "state", epoch_interval=0.01, cores=cores[0])
                assert _committed(out)  # (resumed from a complete epoch, not from the start)
            else:  # (on as many kernels, or on another number: rescaled)
                run(flow, state_dir=tmp_path / "state", epoch_interval=0.01, cores=cores[1])
        writer.join(DEADLINE)
    committed = Counter(_committed(out))
    assert sorted(committed) == list(range(TOTAL))
    assert {value for value, count in committed.items() if count > 1} == set()


@pytest.mark.parametrize("cores", [1, 2])
def test_sources_of_one_stream_through_two_iterators_are_refused_with_a_state_dir(tmp_path, cores):
    """`from_iterable(stream)` and `from_iterable(map(str.strip, stream))`:
    two readers, each counting what its own iterator got, and which gets
    which line depends on timing, so a run resumed over the stream fed
    again lost some lines and repeated others (1,000 of 6,000 each way).
    Refused as the run starts, before a line is read: a run without a
    state_dir then reads every line."""
    read, write = os.pipe()
    with os.fdopen(read) as stream, os.fdopen(write, "w") as out:
        out.write("".join(f"{i}\n" for i in range(100)))
        out.close()
        flow = Dataflow("lines")
        one = flow.from_iterable(stream).map(int)
        other = flow.from_iterable(map(str.strip, stream)).map(int)
        one.union(other).to_files(tmp_path / "out")
        with pytest.raises(Exception, match=r"reads too, through another iterator.*one from_iterable"):
            run(flow, state_dir=tmp_path / "state", cores=cores)
        again = Dataflow("again")
        lines = again.from_iterable(stream).map(int).collect()
        run(again)
    assert lines.items == list(range(100))


def test_a_run_with_a_state_dir_over_a_stream_an_earlier_run_of_the_process_read_is_refused(tmp_path):
    """One source: a run with a state_dir fails, and a run in the same
    process resumes over the same (still open) stream. The earlier run's
    reader read on, and the lines that run took after its last complete
    epoch were gone; the restored position, counted from the stream's
    start, skipped as many again: 728 of 3,000 lines committed, no error.
    Refused now, naming the source; a run without a state_dir then reads
    on from where the failed run stopped (README: live streams)."""
    out, state, marker = tmp_path / "out", tmp_path / "state", tmp_path / "failed"

    fails_once = failing_once_at(TOTAL // 2, marker)

    stream, writer = _fed(out, slowly=True)
    with stream:
        for attempt in range(2):
            flow = Dataflow("lines")
            flow.from_iterable(stream, name="lines in").map(int).map(fails_once).to_files(out)
            with pytest.raises(Exception, match="the first run fails here" if attempt == 0 else
                               r"lines in \(step 0\): an earlier run of this process read lines of its "
                               r"input.*give this run the input again"):
                run(flow, state_dir=state, epoch_interval=0.01)
        rest = Dataflow("rest")
        lines = rest.from_iterable(stream).map(int).collect()
        run(rest)
        writer.join(DEADLINE)
    assert lines.items and lines.items == list(range(lines.items[0], TOTAL))
