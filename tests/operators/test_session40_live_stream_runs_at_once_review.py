"""`from_iterable` over a live stream with a `state_dir`, while another run
of the same process (another thread's) reads the stream: the two share its
lines by timing, and this run's snapshots count only its own share (a run
resumed over the stream fed again would skip by them). It was refused only
where the other run had taken a line first: with both waiting for the
stream's first line, both ran and split it (9,300 and 10,700 of 20,000
lines). Now it is refused where a run going on reads the stream."""

from __future__ import annotations

import os
import threading
import time

import pytest
from _live_streams import DEADLINE

from kernel import Dataflow, run
from operators import _live_input

TOTAL = 3_000


def _flow_over(stream, got: list, name: str) -> Dataflow:
    flow = Dataflow(name)
    flow.from_iterable(stream, name=f"{name} in").map(int).sink(got.append)
    return flow


def _readers() -> int:
    """Readers of runs going on that have not read their input to its end
    (those of earlier tests' runs have)."""
    return sum(reader._run() is not None and not reader._stopped and not reader.done
               for reader in list(_live_input._reading.values()))


def test_a_run_with_a_state_dir_over_a_stream_another_run_reads_meanwhile_is_refused(tmp_path):
    read_end, write_end = os.pipe()
    first, second = [], []
    failures = []
    with os.fdopen(read_end) as stream, os.fdopen(os.dup(read_end)) as other:
        def reads_first():
            try:
                run(_flow_over(stream, first, "first"))
            except BaseException as exc:  # (told to the test below)
                failures.append(exc)

        reading = threading.Thread(target=reads_first, daemon=True)
        reading.start()
        deadline = time.monotonic() + DEADLINE
        while _readers() < 1 and time.monotonic() < deadline:  # (the first run waits for its first line)
            time.sleep(0.005)
        assert _readers() == 1

        refused = threading.Event()

        def writer():  # (once the second run is refused, or reads too: never before)
            deadline = time.monotonic() + DEADLINE
            while not refused.is_set() and _readers() < 2 and time.monotonic() < deadline:
                time.sleep(0.005)
            with os.fdopen(write_end, "w") as fed:
                fed.write("".join(f"{i}\n" for i in range(TOTAL)))

        feeding = threading.Thread(target=writer, daemon=True)
        feeding.start()
        try:
            with pytest.raises(Exception, match=r"second in \(step 0\): another run of this process "
                                                r"\(first in \(step 0\)\) reads its input"):
                run(_flow_over(other, second, "second"), state_dir=tmp_path / "state")
        finally:
            refused.set()
            feeding.join(DEADLINE)
            reading.join(DEADLINE)
    assert not failures
    assert second == []
    assert first == list(range(TOTAL))
