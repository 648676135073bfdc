"""When the watchdog's first report on a blocked step comes: REPORT_AFTER
after the step's slice began, whatever the phase of the watchdog's looks.
It counted from its first look that found the loop busy, so the report came
between REPORT_AFTER and REPORT_AFTER + CHECK after the step began: measured
with `python -m kernel.run`, a map blocked on record 0 was first reported
11.0 s after it began (5 of 5; a fresh thread's first look is a CHECK after
it starts), saying "for 10.0 s"; now 10.0 s. The time the report says is no
more than the time the step has really been blocked."""

from __future__ import annotations

import logging
import re
import threading
import time

import pytest

from kernel import Dataflow, run
from kernel.scheduling import _watchdog

BLOCKED = "has not handed the event loop back"
REPORT_AFTER, CHECK = 0.5, 0.2  # (over two CHECKs, as 10 s of 1 s; not a multiple: the thread wakes when due)
SLACK = 0.1  # the watchdog thread's wake and its turn at the GIL on a loaded machine (< CHECK)


class _FirstReport(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.at: float | None = None
        self.message = ""
        self.arrived = threading.Event()

    def emit(self, record) -> None:
        if BLOCKED in record.getMessage() and not self.arrived.is_set():
            self.at, self.message = time.monotonic(), record.getMessage()
            self.arrived.set()


@pytest.fixture
def first_report(monkeypatch):
    monkeypatch.setattr(_watchdog, "REPORT_AFTER", REPORT_AFTER)
    monkeypatch.setattr(_watchdog, "CHECK", CHECK)
    _watchdog.retire_if_idle()  # a fresh thread, as in `python -m kernel.run`: its first look a CHECK on
    handler = _FirstReport()
    logging.getLogger("kernel").addHandler(handler)
    yield handler
    logging.getLogger("kernel").removeHandler(handler)


@pytest.mark.parametrize("blocked_record", [0, 40])
def test_the_first_report_comes_at_the_threshold(first_report, blocked_record):
    began = []

    def waits(x):
        if x == blocked_record:
            began.append(time.monotonic())
            assert first_report.arrived.wait(10), "no report came"
        elif x < blocked_record:  # the loop answers the watchdog between these batches
            time.sleep(0.005)
        return x

    flow = Dataflow("blocked")
    out = flow.from_iterable(range(50), batch_size=1).map(waits).collect()
    run(flow)
    assert out.items == list(range(50))
    after = first_report.at - began[0]
    said = float(re.search(rf"{BLOCKED} for ([\d.]+) s", first_report.message).group(1))
    assert REPORT_AFTER <= after < REPORT_AFTER + SLACK, (after, first_report.message)
    assert REPORT_AFTER <= said <= after + 0.05, (said, after)  # (said to 0.1 s)
