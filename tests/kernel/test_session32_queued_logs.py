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


def test_records_a_kernel_logs_as_it_ends_reach_a_multiprocessing_queues_listener():
    """A multiprocessing queue's feeder thread writes to its pipe after
    `put()` returns: 2,000 records logged by each kernel just before its run
    ends went down with the kernel, some or all (one record in CI beside a
    whole suite); each kernel now closes the queue and waits for its feeder
    as it ends."""
    code = textwrap.dedent("""
        import logging, logging.handlers, multiprocessing, sys
        logs = multiprocessing.get_context("fork").Queue()
        logging.getLogger().addHandler(logging.handlers.QueueHandler(logs))
        written = logging.StreamHandler(sys.stdout)
        listener = logging.handlers.QueueListener(logs, written)
        listener.start()
        from kernel import Dataflow, run
        def last_words(x):
            for i in range(2_000):
                logging.getLogger("app").warning("%s %s", x, i)
        flow = Dataflow("logs")
        flow.from_iterable(range(2)).sink(last_words)
        run(flow, cores=2)
        listener.stop()
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    lines = [line for line in done.stdout.decode().splitlines() if not line.startswith("[kernel")]
    assert sorted(lines) == sorted(f"{x} {i}" for x in range(2) for i in range(2_000)), len(lines)
