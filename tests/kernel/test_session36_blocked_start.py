"""Session 36: a step's open() that blocks is the kernel's work too.

The kernel runs its steps' open() and restore() in `join()`, on the run's
main task, outside any slice or kernel task: the watchdog took a loop
blocked there for the host's (no report: a run whose step waited for ever
on a connection in open() hung without a word), and a first Ctrl-C only
cancelled the run once open() returned."""

import os
import time

from _interrupts import interrupted
from _watchdog_reports import reports  # noqa: F401 (a fixture)

from kernel import Dataflow, Operator, run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_watchdog_reports_a_blocked_open(reports):  # noqa: F811
    class Connects(Operator):
        def open(self, context):
            reports.arrived.wait(5)  # blocks until the watchdog has told of it (or 5 s: a failure)

        def on_batch(self, port, batch):
            self.emit(batch)

    flow = Dataflow("blocked-open")
    out = flow.from_iterable([1, 2]).apply(Connects).collect()
    started = time.monotonic()
    run(flow)
    assert time.monotonic() - started < 4.5, "the watchdog said nothing of the blocked open()"
    assert out.items == [1, 2]
    what = reports.messages[0].split(" has not")[0]
    assert what == (f"[kernel 0] operator 'Connects (step 1)', function '{__name__}.test_the_watchdog_"
                    "reports_a_blocked_open.<locals>.Connects.open', run in the kernel's start (its steps' "
                    "open and restore),")
    assert "reports.arrived.wait(5)" in reports.messages[0]  # its frames: where it is blocked


BLOCKED_OPEN = """
    import signal, sys, time
    from kernel import Dataflow, Operator, run

    class Connects(Operator):
        def open(self, context):
            print("READY", flush=True)
            time.sleep(60)  # a connection that never comes

        def on_batch(self, port, batch):
            self.emit(batch)

    flow = Dataflow("blocked-open")
    flow.from_iterable([1]).apply(Connects).collect()
    try:
        run(flow)
    except KeyboardInterrupt:
        print("KeyboardInterrupt", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
        sys.exit(3)
"""


def test_one_ctrl_c_stops_a_run_blocked_in_open():
    code, out, err, _ = interrupted(BLOCKED_OPEN)
    assert (code, out.strip()) == (3, "KeyboardInterrupt True"), err[-2000:]
