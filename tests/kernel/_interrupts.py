"""A Python process of its own, interrupted once it says READY: for tests of
what one Ctrl-C (or SIGTERM) stops."""

import os
import signal
import subprocess
import sys
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEADLINE = 8.0  # seconds for the child to end after the signal (it used to wait for ever)
ASLEEP_WITHIN = 30.0  # seconds for the child to block after READY: only a hang reaches it


# A script's end (indented as the scripts here are, before dedent): its
# `flow` run on `{cores}` kernels; a KeyboardInterrupt says so, and whether
# the process's SIGINT handler is Python's again (not asyncio's runner's),
# and exits 3.
RUN_UNTIL_INTERRUPTED = """
    import signal, sys
    from kernel import run

    try:
        run(flow, cores={cores})
    except KeyboardInterrupt:
        print("KeyboardInterrupt", signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
        sys.exit(3)
    print("FINISHED", flush=True)
"""


def interrupted(script: str, signum=signal.SIGINT) -> tuple[int, str, str, float]:
    """`script` run until it prints READY, then sent `signum`: (its exit
    code, stdout after READY, stderr, seconds from the signal to its end)."""
    return interrupted_command(["-c", textwrap.dedent(script)], signum)


def interrupted_command(arguments: list[str], signum=signal.SIGINT) -> tuple[int, str, str, float]:
    """`python *arguments` (a pipeline under `-m kernel.run`), as `interrupted`."""
    child = subprocess.Popen([sys.executable, *arguments], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "READY"
        _wait_until_asleep(child.pid)
        sent = time.monotonic()
        child.send_signal(signum)
        out, err = child.communicate(timeout=DEADLINE)
        return child.returncode, out, err, time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()


def _wait_until_asleep(pid: int) -> None:
    """Until `pid`'s main thread sleeps in a system call (the child's
    time.sleep after READY, a GIL wait, a launcher's wait for its kernels).

    READY is printed before the call that blocks: a SIGINT that came
    between the last check of pending signals and the sleep's system call
    was noted by CPython but interrupted nothing, and its handler ran only
    when time.sleep(60) returned (CPython's own window, the kernel's
    handler or not: 5 of 2,000 plain `print("READY"); time.sleep(60)`
    children under load; this test's 8 s went by about once in 115 CI runs).
    Asleep, the thread is past that window (or, waiting for the GIL, before
    a check); a signal then interrupts the call."""
    deadline = time.monotonic() + ASLEEP_WITHIN
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]  # (the name, in parentheses, may hold spaces)
        except OSError:
            return  # no /proc (not Linux), or the child ended: signal it as it is
        if state == "S":
            return
        time.sleep(0.001)
