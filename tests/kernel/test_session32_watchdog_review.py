"""Review of the kernel watchdog (kernel/scheduling/_watchdog.py): two
kernels sharing one loop each blamed the other's blocked step."""

from __future__ import annotations

import asyncio
import io
import logging
import pdb
import sys
import threading

import pytest

from kernel import Dataflow, run, run_async
from kernel.scheduling import _watchdog

BLOCKED = "has not handed the event loop back"


@pytest.fixture
def quick(monkeypatch):
    """The watchdog looking every 20 ms and reporting from 0.3 s (the
    process's thread, still there after an earlier run, looks at once)."""
    monkeypatch.setattr(_watchdog, "REPORT_AFTER", 0.3)
    monkeypatch.setattr(_watchdog, "CHECK", 0.02)
    _watchdog._wake.set()


class _Reports(logging.Handler):
    """The watchdog's reports on logger `kernel`; `on_report(record)` is
    called at each, on the watchdog's thread."""

    def __init__(self, on_report=None) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.on_report = on_report
        self.arrived = threading.Event()

    def emit(self, record) -> None:
        if BLOCKED not in record.getMessage():
            return
        self.records.append(record)
        self.arrived.set()
        if self.on_report is not None:
            self.on_report(record)


@pytest.fixture
def reports():
    made = []

    def attach(on_report=None) -> _Reports:
        handler = _Reports(on_report)
        logging.getLogger("kernel").addHandler(handler)
        made.append(handler)
        return handler

    yield attach
    for handler in made:
        logging.getLogger("kernel").removeHandler(handler)


def _messages(handler: _Reports) -> list[str]:
    return [record.getMessage().split(":", 1)[0] for record in handler.records]


def _local(name: str) -> str:
    """A function `name` defined in the calling test, as a report names it."""
    test = sys._getframe(1).f_code.co_qualname
    return f"{__name__}.{test}.<locals>.{name}"


async def test_two_kernels_on_one_loop_report_a_blocked_step_once_by_its_own_kernel(quick, reports):
    """Two `run_async` runs share the test's loop; a map of the first blocks
    until its kernel's second report (0.6 s). The second kernel's watchdog
    sees the same blocked loop, but the step is not its own: one report at
    0.3 s, not one from each kernel naming the first's step."""
    seen = reports()
    again = threading.Event()
    seen.on_report = lambda record: "for 0.6 s" in record.getMessage() and again.set()

    def blocks(x):
        if x == 3:
            assert again.wait(10), "no second report came"
        return x

    async def slow_input():
        for i in range(30):
            yield i
            await asyncio.sleep(0.005)

    blocking = Dataflow("blocking")
    blocked = blocking.from_iterable(range(6)).map(blocks).collect()
    beside = Dataflow("beside")
    other = beside.from_async_iterable(slow_input()).collect()
    await asyncio.gather(run_async(blocking), run_async(beside))
    assert blocked.items == list(range(6)) and other.items == list(range(30))
    first = [m for m in _messages(seen) if "for 0.3 s" in m]
    assert first == [f"[kernel 0] operator 'map(blocks) (step 1)', function '{_local('blocks')}', run in the "
                     f"activation of from_iterable (step 0), {BLOCKED} for 0.3 s and is still running"], first


def test_a_fused_chains_generated_frames_are_not_shown_as_the_users(quick, reports):
    """A map blocked in a fused chain (map, filter, map: one generated
    comprehension, operators/_fusion.py) is shown from its own function in:
    the comprehension's frames ("<fused chain N>", no source to show) are
    the library's, not the user's, and were shown first."""
    seen = reports()

    def waits(x):
        if x == 2:
            assert seen.arrived.wait(10), "no report came"
        return x

    flow = Dataflow("fused")
    out = flow.from_iterable(range(4)).map(lambda x: x).filter(lambda x: True).map(waits).collect()
    run(flow)
    assert out.items == list(range(4))
    where = seen.records[0].getMessage().split("(innermost last):\n", 1)[1]
    assert where.startswith(f'  File "{__file__}", line ') and "in waits" in where, where
    assert "<fused chain" not in where, where


class _DebuggerInput:
    """What a user types at pdb's prompt: `c` (continue), once `ready` is set."""

    def __init__(self, ready: threading.Event) -> None:
        self.ready = ready

    def readline(self) -> str:
        assert self.ready.wait(10), "the watchdog never looked"
        return "c\n"


def test_a_step_stopped_at_a_debuggers_prompt_is_not_reported(quick, reports, monkeypatch):
    """pdb at a breakpoint in a step waits at its prompt for the user: the
    loop is blocked, but not by the step. It was reported (at 10, 20, 40 s...,
    into the debugging session); now the watchdog, having looked twice at
    the report's time, says nothing. Continued, the step then blocks in
    earnest and is reported, from the time it left the debugger, without
    the debugger's frames."""
    seen = reports()
    looked = []
    looked_twice = threading.Event()
    report = _watchdog.Watchdog._report

    def counted(self, blocked):
        looked.append(blocked)
        if len(looked) >= 2:
            looked_twice.set()
        return report(self, blocked)

    monkeypatch.setattr(_watchdog.Watchdog, "_report", counted)

    def debugged(x):
        if x == 1:
            # (nosigint: pdb's `c` installs its own SIGINT handler and leaves it there, swallowing
            # every later Ctrl-C of the test process: CI's Ctrl-C tests ran on, their kernels grew)
            pdb.Pdb(stdin=_DebuggerInput(looked_twice), stdout=io.StringIO(), nosigint=True).set_trace()
            assert seen.arrived.wait(10), "no report came"
        return x

    flow = Dataflow("debugged")
    out = flow.from_iterable(range(3)).map(debugged).collect()
    run(flow)
    assert out.items == [0, 1, 2]
    assert _messages(seen) == [f"[kernel 0] operator 'map(debugged) (step 1)', function "
                               f"'{_local('debugged')}', run in the activation of from_iterable (step 0), "
                               f"{BLOCKED} for 0.3 s and is still running"]
    assert "in debugged" in seen.records[0].getMessage() and "pdb.py" not in seen.records[0].getMessage()
