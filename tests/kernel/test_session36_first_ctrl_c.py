"""Session 36: one Ctrl-C stops a one-kernel run whose step is blocked.

Under `run(flow)` (one kernel) asyncio's Runner took the first SIGINT and
only cancelled the run's main task, at its next await: a step blocked in
its function (a sleep, a lock, a socket) went on, and only a second Ctrl-C
stopped the run; on several cores the first one did. Real processes, real
signals: each child says READY from inside the blocked function, and the
test sends one SIGINT."""

import signal
import textwrap

import pytest
from _interrupts import RUN_UNTIL_INTERRUPTED, interrupted, interrupted_command
from _procs import without_stall_reports

BLOCKED_STEP = """
    import signal, sys, time
    from kernel import Dataflow, run

    def stuck(x):
        print("READY", flush=True)
        time.sleep(60)  # a function blocked (a lock, a socket...)
        return x

    flow = Dataflow("blocked")
    flow.from_iterable(range(3)).map(stuck).collect()
""" + RUN_UNTIL_INTERRUPTED

BLOCKED_TASK = """
    import signal, sys, time
    from kernel import Dataflow, run

    async def events():
        print("READY", flush=True)
        time.sleep(60)  # blocking inside an async source: the kernel's reader task
        yield 1

    flow = Dataflow("blocked-task")
    flow.from_async_iterable(events).collect()
    try:
        run(flow)
    except KeyboardInterrupt:
        # ...and the process's SIGINT handler is Python's again (not asyncio's runner's)
        print("KeyboardInterrupt", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
        sys.exit(3)
"""

OWN_HANDLER = """
    import signal, sys, time
    from kernel import Dataflow, run

    heard = []
    signal.signal(signal.SIGINT, lambda signum, frame: heard.append(signum))

    def waits_for_the_signal(x):
        print("READY", flush=True)
        deadline = time.monotonic() + 30
        while not heard and time.monotonic() < deadline:
            time.sleep(0.01)
        return x

    flow = Dataflow("own-handler")
    out = flow.from_iterable([1]).map(waits_for_the_signal).collect()
    run(flow)
    print("FINISHED", out.items, len(heard), flush=True)
"""


@pytest.mark.parametrize("cores", [1, 2])
def test_one_ctrl_c_stops_a_run_blocked_in_a_step(cores):
    code, out, err, _ = interrupted(BLOCKED_STEP.format(cores=cores))
    # (on two kernels, the other kernel's record may say READY too, after the first)
    assert (code, out.replace("READY\n", "").strip()) == (3, "KeyboardInterrupt True"), err[-2000:]


def test_one_ctrl_c_stops_a_run_blocked_in_a_kernel_task():
    code, out, err, _ = interrupted(BLOCKED_TASK)
    assert (code, out.strip()) == (3, "KeyboardInterrupt True"), err[-2000:]


def test_a_callers_own_sigint_handler_is_left_alone():
    code, out, err, _ = interrupted(OWN_HANDLER)
    assert (code, out.strip()) == (0, "FINISHED [1] 1"), err[-2000:]


def test_the_command_line_stops_a_blocked_step_on_one_ctrl_c_or_sigterm(tmp_path):
    pipeline = tmp_path / "blocked.py"
    pipeline.write_text(textwrap.dedent("""
        import time
        from kernel import Dataflow

        def stuck(x):
            print("READY", flush=True)
            time.sleep(60)
            return x

        flow = Dataflow("blocked")
        flow.from_iterable(range(3)).map(stuck).collect()
    """))
    for signum, expected, said in ((signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")):
        code, _, err, _ = interrupted_command(["-m", "kernel.run", str(pipeline), "--quiet"], signum)
        assert code == expected, err[-2000:]
        assert without_stall_reports(err) == f"{said}\n"


def test_a_handler_a_step_set_is_not_undone_after_the_run():
    """After the run, the SIGINT handler asyncio's runner (or the kernel's
    wrapper of it) left is taken down, not one a step set meanwhile (pdb's
    'continue' does)."""
    from kernel import Dataflow, run

    def mine(signum, frame):
        pass

    def sets_a_handler(x):
        signal.signal(signal.SIGINT, mine)
        return x

    before = signal.getsignal(signal.SIGINT)
    assert before is signal.default_int_handler  # (as the runner needs to install its own)
    flow = Dataflow("sets-a-handler")
    out = flow.from_iterable([1]).map(sets_a_handler).collect()
    try:
        run(flow)
        assert signal.getsignal(signal.SIGINT) is mine
        assert out.items == [1]
    finally:
        signal.signal(signal.SIGINT, before)
