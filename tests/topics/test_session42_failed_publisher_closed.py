"""Session 42: a publishing run whose user function raised, a subscriber
reading it, ends without "Unclosed client session".

The run's failure cancels the publisher's server task, whose cleanup stops
the server (a subscriber's connection closed, awaited) and then abandons
its connection to the coordinator; the loop's end (asyncio.run's) cancels
every task once more, which cut the server's stop short, and the
connection's aiohttp session was never closed: "Unclosed client session"
on stderr after every such run (3 of 3, one kernel).

Real processes: a coordinator, a subscriber, a publisher that raises once
the subscriber has read from it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "system"))
from _system import System, wait_until

PUBLISHER = """
import itertools, os, sys, time
from kernel import Dataflow, run

def reading(n):
    if os.path.exists(sys.argv[2]):
        raise ValueError("the user function failed")
    if n % 50 == 0:
        time.sleep(0.005)  # (a stream that goes on until the failure, not a flood)
    return n

flow = Dataflow("publisher")
flow.from_iterable(itertools.count()).map(reading).publish("failing")
run(flow, coordinator=sys.argv[1])
"""

SUBSCRIBER = """
import sys
from kernel import Dataflow, run

flow = Dataflow("subscriber")
flow.subscribe("failing", timeout=60).map(lambda n: print(n, flush=True)).collect()
run(flow, coordinator=sys.argv[1])
"""


def test_a_publisher_whose_function_raised_closes_its_coordinator_connection(tmp_path):
    system = System(tmp_path)
    subscriber = None
    try:
        system.start_coordinator()
        (tmp_path / "publisher.py").write_text(PUBLISHER)
        (tmp_path / "subscriber.py").write_text(SUBSCRIBER)
        coordinator, boom = f"127.0.0.1:{system.port}", tmp_path / "boom"
        with open(tmp_path / "subscriber.out", "wb") as out:
            subscriber = subprocess.Popen([sys.executable, "subscriber.py", coordinator], cwd=tmp_path,
                                          env=system.env, stdout=out, stderr=subprocess.DEVNULL)
        publisher = subprocess.Popen([sys.executable, "publisher.py", coordinator, str(boom)], cwd=tmp_path,
                                     env=system.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # (the subscriber reading: its connection open when the publisher fails)
        wait_until(lambda: (tmp_path / "subscriber.out").stat().st_size > 0 or publisher.poll() is not None,
                   what="the subscriber to read from the publisher")
        boom.touch()
        _, err = publisher.communicate(timeout=60)
        text = err.decode(errors="replace")
        assert publisher.returncode == 1 and "the user function failed" in text, text[-3000:]
        assert "Unclosed" not in text, text[-3000:]
    finally:
        if subscriber is not None:
            subscriber.kill()
            subscriber.wait()
        system.close()
