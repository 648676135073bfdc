"""Logs through a `QueueHandler` in kernel processes
(kernel/execution/_queued_logs.py): the logging cookbook's set-up for
asyncio applications (a `queue.Queue` drained by a `QueueListener`'s
thread) lost everything two kernel processes logged, the listener's thread
being the caller's; one kernel, in the caller, logged it all."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SET_UP = {
    "thread queue": """
        import queue
        logs = queue.Queue()
    """,
    "multiprocessing queue": """
        import multiprocessing
        logs = multiprocessing.get_context("fork").Queue()
    """,
}

CODE = """
    import logging, logging.handlers, sys, time
    {set_up}
    logging.getLogger().addHandler(logging.handlers.QueueHandler(logs))
    written = logging.StreamHandler(sys.stdout)
    written.setFormatter(logging.Formatter("%(name)s %(message)s"))
    listener = logging.handlers.QueueListener(logs, written)
    listener.start()
    from kernel import Dataflow, run
    def slow(x):
        time.sleep(0.04)  # a stall: the kernel's own warning
        logging.getLogger("app").warning("processed %s", x)
        return x
    flow = Dataflow("logs")
    flow.from_iterable(range(6), batch_size=1).map(slow).sink(lambda x: None)
    run(flow, cores={cores})
    listener.stop()
"""


@pytest.mark.parametrize("cores", [1, 2, 3])
@pytest.mark.parametrize("queue_kind", list(SET_UP))
def test_what_kernels_log_through_a_queue_handler_is_written_once(queue_kind, cores):
    code = CODE.format(set_up=textwrap.indent(textwrap.dedent(SET_UP[queue_kind]), "    "), cores=cores)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    app = sorted(line for line in lines if line.startswith("app "))
    assert app == [f"app processed {x}" for x in range(6)], lines
    stalls = {line.split("]")[0] for line in lines if line.startswith("kernel [kernel") and "stall:" in line}
    assert stalls == {f"kernel [kernel {k}" for k in range(cores)}, lines
