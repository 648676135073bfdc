"""The watchdog's report of a step blocked inside another step's activation
(a map chained after its source) named the step in its message, but its
log record's `step` field was the activation's, `from_iterable (step 0)`,
and a step's open() blocked as the run starts was logged as `the kernel's
start`: a filter (or a structured log's reader) keeping one step's records
never saw its own step blocked. The record's `step` is now the step
blocked; the activation's name where no step is found (a source's poll
blocked is both)."""

from __future__ import annotations

import logging
import threading

import pytest

from kernel import Dataflow, Operator, run
from kernel.scheduling import _watchdog

BLOCKED = "has not handed the event loop back"


class _StepReports(logging.Filter):
    """Keeps the watchdog's reports of one step, by the record's `step`
    (as a user's filter would), and every report's `step`."""

    def __init__(self, step: str) -> None:
        super().__init__()
        self.step = step
        self.kept: list[logging.LogRecord] = []
        self.steps: list[str] = []
        self.arrived = threading.Event()

    def filter(self, record) -> bool:
        if BLOCKED in record.getMessage():
            self.steps.append(record.step)
            if record.step == self.step:
                self.kept.append(record)
                self.arrived.set()
        return True


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(_watchdog, "REPORT_AFTER", 0.1)
    monkeypatch.setattr(_watchdog, "CHECK", 0.02)
    _watchdog._wake.set()  # (the process's thread, still there after an earlier run, looks at once)


def _watching(step: str):
    reports = _StepReports(step)
    handler = logging.Handler()  # (a NullHandler asks no filter)
    handler.emit = lambda record: None
    handler.addFilter(reports)
    logging.getLogger("kernel").addHandler(handler)
    return reports, handler


def test_a_chained_steps_report_has_that_step_as_its_step_field(quick):
    reports, handler = _watching("map(slow) (step 2)")

    def slow(x):
        if x == 1:  # waits for its own report, found by its name
            assert reports.arrived.wait(10), f"no report with the map's step, only {reports.steps}"
        return x * 10

    try:
        flow = Dataflow("blocked")
        out = flow.from_iterable(range(3)).map(lambda x: x + 1).map(slow).collect()
        run(flow)
    finally:
        logging.getLogger("kernel").removeHandler(handler)
    assert out.items == [10, 20, 30]
    record = reports.kept[0]
    assert record.getMessage().startswith(
        "[kernel 0] operator 'map(slow) (step 2)', function '" + __name__
        + ".test_a_chained_steps_report_has_that_step_as_its_step_field.<locals>.slow', run in the "
        f"activation of from_iterable (step 0), {BLOCKED}"), record.getMessage()
    assert record.kernel == 0


class SlowToOpen(Operator):
    def __init__(self, reports) -> None:
        self.reports = reports

    def open(self, context):
        assert self.reports.arrived.wait(10), f"no report with the step, only {self.reports.steps}"

    def on_batch(self, port, batch):
        self.emit(batch)


def test_a_steps_open_blocked_at_the_start_has_that_step_as_its_step_field(quick):
    reports, handler = _watching("connects (step 1)")
    try:
        flow = Dataflow("blocked")
        out = flow.from_iterable(range(3)).apply(lambda: SlowToOpen(reports), name="connects").collect()
        run(flow)
    finally:
        logging.getLogger("kernel").removeHandler(handler)
    assert out.items == [0, 1, 2]
    assert reports.kept[0].getMessage().startswith(
        "[kernel 0] operator 'connects (step 1)', function '" + __name__ + ".SlowToOpen.open', run in "
        "the kernel's start (its steps' open and restore), "), reports.kept[0].getMessage()
