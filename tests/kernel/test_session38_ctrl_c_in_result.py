"""Session 38: one Ctrl-C stops a run whose step's result() blocks.

A step's `result()` runs after the kernel has ended, on the run's main
task, outside what the first-Ctrl-C handler took for the kernel's work
(`_interrupt.py`): on one kernel asyncio's Runner only cancelled the run,
at its next await, once result() had returned, so a blocked one went on
until a second Ctrl-C. Real processes, real signals: each child says READY
from inside the blocked result(), and the test sends one signal."""

import signal
import textwrap

import pytest
from _interrupts import RUN_UNTIL_INTERRUPTED, interrupted, interrupted_command
from _procs import without_stall_reports

PIPELINE = """
    import time
    from kernel import Dataflow, Operator

    class Stuck(Operator):
        def on_batch(self, port, batch):
            pass

        def result(self):
            print("READY", flush=True)
            time.sleep(60)  # a blocking read, a lock...
            return 1

    flow = Dataflow("blocked-result")
    flow.from_iterable(range(3)).apply(Stuck)
"""

RUN = PIPELINE + RUN_UNTIL_INTERRUPTED


@pytest.mark.parametrize("cores", [1, 2])
def test_one_ctrl_c_stops_a_run_blocked_in_a_steps_result(cores):
    code, out, err, _ = interrupted(RUN.format(cores=cores))
    # (on two kernels, the other kernel's result() may say READY too, after the first)
    assert (code, out.replace("READY\n", "").strip()) == (3, "KeyboardInterrupt True"), err[-2000:]


@pytest.mark.parametrize("signum, expected, said", [(signal.SIGINT, 130, "interrupted"),
                                                    (signal.SIGTERM, 143, "terminated")])
def test_the_command_line_stops_a_blocked_result_on_one_signal(tmp_path, signum, expected, said):
    pipeline = tmp_path / "blocked.py"
    pipeline.write_text(textwrap.dedent(PIPELINE))
    code, _, err, _ = interrupted_command(["-m", "kernel.run", str(pipeline), "--quiet"], signum)
    assert code == expected, err[-2000:]
    assert without_stall_reports(err) == f"{said}\n"
