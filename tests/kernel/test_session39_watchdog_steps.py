"""The watchdog's report names the step and function that blocked
(kernel/runtime/_blocked_step.py), as an error raised there would, not only
the activation they run in: a map fused with the steps around it, a user's
operator chained after a map, a count that took the key_by before it all
run in their source's activation, and were reported as
`from_iterable (step 0)`; a step's open() blocked, as the kernel's start.
The report is logged with the step blocked as its `step` (session 40: it
was the activation's, or the start's)."""

from __future__ import annotations

import logging
import threading

import pytest

from kernel import Dataflow, Operator, Source, run
from kernel.scheduling import _watchdog

BLOCKED = "has not handed the event loop back"


@pytest.fixture
def seen(monkeypatch):
    """The watchdog's reports (looking every 20 ms, reporting from 0.3 s)."""
    monkeypatch.setattr(_watchdog, "REPORT_AFTER", 0.3)
    monkeypatch.setattr(_watchdog, "CHECK", 0.02)
    _watchdog._wake.set()  # (the process's thread, still there after an earlier run, looks at once)
    handler = _Reports()
    logging.getLogger("kernel").addHandler(handler)
    yield handler
    logging.getLogger("kernel").removeHandler(handler)


class _Reports(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Event()

    def emit(self, record) -> None:
        if BLOCKED in record.getMessage():
            self.records.append(record)
            self.arrived.set()


class Waits(Operator):
    """Waits for the first report in its on_batch, then passes records on."""

    def __init__(self, seen) -> None:
        self.seen = seen

    def on_batch(self, port, batch):
        assert self.seen.arrived.wait(10), "no report came"
        self.emit(batch)


class WaitingSource(Source):
    """Its first poll waits for the first report, then emits and ends."""

    def __init__(self, seen) -> None:
        self.seen = seen

    def poll(self):
        assert self.seen.arrived.wait(10), "no report came"
        self.emit([1, 2])
        return False


def _waits_for(seen):
    def waits(x):
        if x == 2:
            assert seen.arrived.wait(10), "no report came"
        return x

    return waits


def _local(name: str) -> str:
    return f"{__name__}._waits_for.<locals>.{name}"


CASES = {
    # a map in a fused chain's generated comprehension, two steps after the first fused one
    "fused": (lambda s, seen: s.map(lambda x: x).filter(lambda x: True).map(_waits_for(seen)).map(str),
              f"operator 'map(waits) (step 3)', function '{_local('waits')}', run in the activation "
              "of from_iterable (step 0)"),
    # a user's operator chained after a map
    "user operator": (lambda s, seen: s.map(lambda x: x).apply(lambda: Waits(seen), name="waits"),
                      f"operator 'waits (step 2)', function '{__name__}.Waits.on_batch', run in the "
                      "activation of from_iterable (step 0)"),
    # the key_by's function, run by the count that took it
    "fused key_by": (lambda s, seen: s.key_by(_waits_for(seen)).count(),
                     f"operator 'key_by(waits) (step 1)', function '{_local('waits')}', run in the "
                     "activation of from_iterable (step 0)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_report_names_the_step_and_function_blocked_in_an_activation(seen, case):
    build, named = CASES[case]
    flow = Dataflow("blocked")
    out = build(flow.from_iterable(range(4)), seen).collect()
    run(flow)
    assert len(out.items) == 4
    record = seen.records[0]
    assert record.getMessage().startswith(f"[kernel 0] {named}, {BLOCKED} for 0.3 s"), record.getMessage()
    assert record.step == named.split("'")[1]  # the step blocked (session 40: was the activation's)


def test_a_step_blocked_as_its_own_activation_is_named_once_with_its_function(seen):
    flow = Dataflow("blocked")
    out = flow.source(lambda: WaitingSource(seen), name="waiting").collect()
    run(flow)
    assert out.items == [1, 2]
    record = seen.records[0]
    assert record.getMessage().startswith(
        f"[kernel 0] operator 'waiting (step 0)', function '{__name__}.WaitingSource.poll', {BLOCKED} "
        "for 0.3 s"), record.getMessage()
    assert record.step == "waiting (step 0)"


class WaitsInOpen(Operator):
    """Its open() waits for the first report (a connection that is slow to come)."""

    def __init__(self, seen) -> None:
        self.seen = seen

    def open(self, context):
        assert self.seen.arrived.wait(10), "no report came"

    def on_batch(self, port, batch):
        self.emit(batch)


def test_a_steps_open_blocked_in_the_kernels_start_is_named_with_its_function(seen):
    flow = Dataflow("blocked")
    out = flow.from_iterable(range(3)).apply(lambda: WaitsInOpen(seen), name="connects").collect()
    run(flow)
    assert out.items == [0, 1, 2]
    record = seen.records[0]
    start = "the kernel's start (its steps' open and restore)"
    assert record.getMessage().startswith(
        f"[kernel 0] operator 'connects (step 1)', function '{__name__}.WaitsInOpen.open', run in {start}, "
        f"{BLOCKED} for 0.3 s"), record.getMessage()
    assert record.step == "connects (step 1)"  # the step blocked (session 40: was the start)
