"""Session 36: a processing-time timer's function that blocks is the
kernel's work, as a step's is.

`kernel.call_later(delay, fn)` runs `fn` on the loop outside any slice or
task, so the watchdog took a loop blocked in it for the host's (no report:
the run hung without a word) and a first Ctrl-C only cancelled the run once
`fn` returned."""

import os
import time

from _interrupts import interrupted
from _watchdog_reports import reports  # noqa: F401 (a fixture)

from kernel import Dataflow, Operator, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_watchdog_reports_a_blocked_timer_by_its_function(reports):  # noqa: F811
    class Stuck(Operator):
        def open(self, context):
            context.kernel.call_later(0.0, self.waits_for_the_report)

        def waits_for_the_report(self):
            # blocks the loop until the watchdog has told of it (or 5 s: a failure)
            reports.arrived.wait(5)

        def on_batch(self, port, batch):
            self.emit(batch)

    async def slow_source():
        for i in range(3):
            yield i

    flow = Dataflow("timer")
    out = flow.from_async_iterable(slow_source).apply(Stuck).collect()
    started = time.monotonic()
    run(flow)
    assert time.monotonic() - started < 4.5, "the watchdog said nothing of the blocked timer"
    assert sorted(out.items) == [0, 1, 2]
    what = reports.messages[0].split(" has not")[0]
    assert what.startswith("[kernel 0] timer call_later(") and what.endswith("Stuck.waits_for_the_report)")
    assert "reports.arrived.wait(5)" in reports.messages[0]  # its frames: where it is blocked


BLOCKED_TIMER = """
    import asyncio, signal, sys, time
    from kernel import Dataflow, Operator, run

    class Stuck(Operator):
        def open(self, context):
            context.kernel.call_later(0.0, self.stuck)

        def stuck(self):
            print("READY", flush=True)
            time.sleep(60)

        def on_batch(self, port, batch):
            self.emit(batch)

    async def endless():
        while True:
            await asyncio.sleep(1)
            yield 1

    flow = Dataflow("blocked-timer")
    flow.from_async_iterable(endless).apply(Stuck).collect()
    try:
        run(flow)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
        sys.exit(3)
"""


def test_one_ctrl_c_stops_a_run_blocked_in_a_timer():
    code, out, err, _ = interrupted(BLOCKED_TIMER)
    assert (code, out.strip()) == (3, "KeyboardInterrupt True"), err[-2000:]
