"""Session 44: the Ctrl-C tests' child is signalled once it is blocked,
not as soon as it says READY (`_interrupts._wait_until_asleep`).

The children print READY just before the call that blocks (time.sleep(60)
in a step, a task, a timer). A SIGINT that came between CPython's last
check of pending signals and the sleep's system call interrupted nothing:
the handler, the kernel's or Python's own, ran 60 s later, and the test's
8 s went by (test_session36_first_ctrl_c's blocked task, about once in 115
CI runs; plain `print("READY"); time.sleep(60)` children, 5 of 2,000 under
two CPU burners). That window is microseconds long and cannot be hit at
will; here the child works 0.2 s between READY and its sleep, and the one
SIGINT must land in the sleep, as the Ctrl-C tests mean it to."""

from _interrupts import interrupted

SPINS_THEN_SLEEPS = """
    import sys, time, traceback

    def runs():  # a signal now would land here
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            pass

    def blocks():  # the signal is meant for this
        time.sleep(60)

    try:
        print("READY", flush=True)
        runs()
        blocks()
    except KeyboardInterrupt as exc:
        print(traceback.extract_tb(exc.__traceback__)[-1].name, flush=True)
        sys.exit(3)
"""


def test_the_signal_comes_once_the_child_is_blocked_not_while_it_runs():
    code, out, err, _ = interrupted(SPINS_THEN_SLEEPS)
    assert (code, out.strip()) == (3, "blocks"), err[-2000:]
