"""Two runs of one process reading one live stream at the same time, one
of them with a `state_dir`: they share its lines by timing, and the
snapshots of the one with a state_dir count only its own share. The
refusal looked for a run going on before the reader was registered, and
only from the run with a state_dir: a run without one that began reading
after it was not refused (10,100 and 9,900 of 20,000 lines, no error),
and two runs with one that both looked before either registered both
read. The look and the registration are now under one lock, and a run
reading the stream while one with a state_dir does is refused, whichever
began first."""

from __future__ import annotations

import os
import threading
import time

import pytest
from _live_streams import DEADLINE
from test_session40_live_stream_runs_at_once_review import TOTAL, _flow_over, _readers

from kernel import run
from operators._live_input import LiveReader


def _fed_once(write_end: int, refused: threading.Event) -> threading.Thread:
    """Writes TOTAL lines once the second run is refused or reads too."""

    def writer():
        deadline = time.monotonic() + DEADLINE
        while not refused.is_set() and _readers() < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        with os.fdopen(write_end, "w") as fed:
            fed.write("".join(f"{i}\n" for i in range(TOTAL)))

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    return thread


def test_a_run_over_a_stream_a_run_with_a_state_dir_reads_meanwhile_is_refused(tmp_path):
    read_end, write_end = os.pipe()
    first, second, failures = [], [], []
    with os.fdopen(read_end) as stream, os.fdopen(os.dup(read_end)) as other:
        def reads_first():
            try:
                run(_flow_over(stream, first, "first"), state_dir=tmp_path / "state")
            except BaseException as exc:  # (told to the test below)
                failures.append(exc)

        reading = threading.Thread(target=reads_first, daemon=True)
        reading.start()
        deadline = time.monotonic() + DEADLINE
        while _readers() < 1 and time.monotonic() < deadline:  # (the first run waits for its first line)
            time.sleep(0.005)
        assert _readers() == 1
        refused = threading.Event()
        feeding = _fed_once(write_end, refused)
        try:
            with pytest.raises(Exception, match=r"second in \(step 0\): another run of this process "
                                                r"\(first in \(step 0\)\), which has a state_dir, reads"):
                run(_flow_over(other, second, "second"))
        finally:
            refused.set()
            feeding.join(DEADLINE)
            reading.join(DEADLINE)
    assert not failures
    assert second == []
    assert first == list(range(TOTAL))


def test_two_runs_with_a_state_dir_that_look_in_the_same_instant_one_is_refused(tmp_path, monkeypatch):
    looked = threading.Barrier(2, timeout=DEADLINE)
    refuse = LiveReader.refuse_read_by_an_earlier_run

    def looks_then_waits(*args):  # (each run has looked before either registers its reader)
        refuse(*args)
        looked.wait()

    monkeypatch.setattr(LiveReader, "refuse_read_by_an_earlier_run", staticmethod(looks_then_waits))
    read_end, write_end = os.pipe()
    got = {"first": [], "second": []}
    failures = {}
    with os.fdopen(read_end) as stream, os.fdopen(os.dup(read_end)) as other:
        def reads(name, over):
            try:
                run(_flow_over(over, got[name], name), state_dir=tmp_path / name)
            except BaseException as exc:  # (told to the test below)
                failures[name] = exc

        refused = threading.Event()
        feeding = _fed_once(write_end, refused)
        runs = [threading.Thread(target=reads, args=("first", stream), daemon=True),
                threading.Thread(target=reads, args=("second", other), daemon=True)]
        for each in runs:
            each.start()
        deadline = time.monotonic() + DEADLINE
        while not failures and _readers() < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        refused.set()
        feeding.join(DEADLINE)
        for each in runs:
            each.join(DEADLINE)
    assert len(failures) == 1, (failures, {name: len(lines) for name, lines in got.items()})
    (loser, error), = failures.items()
    assert "reads its input" in str(error) and "at the same time" in str(error)
    assert got[loser] == []
    assert got["second" if loser == "first" else "first"] == list(range(TOTAL))
