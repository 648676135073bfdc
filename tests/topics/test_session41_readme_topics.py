"""README, "Topics between jobs", item 11: a name another app publishes
while it runs is refused, `topic 'x' is published by app:host:4242, which
is running`. Under `run` (uvloop) the publisher or service refused so
failed with `TypeError: transport sockets do not support shutdown()
method` instead: its connection to the coordinator was abandoned
(`Directory.abandon`) through a `shutdown()` that uvloop's stand-in for
the socket does not have, and that error hid the refusal.

Real processes: the module's coordinator and readings.py (test_topics'
helpers) as the name's first publisher; the second in this process."""

from __future__ import annotations

import pytest
from test_topics import (  # noqa: F401  (fixtures, and what kills the jobs a test started)
    Job,
    _no_job_left,
    coordinator,
    system,
)

from kernel import Dataflow, run


def _refused(system, monkeypatch, build) -> str:  # noqa: F811
    first = Job(system, "readings.py", "a1", COUNT=0)
    first.wait_published()
    monkeypatch.setenv("KERNEL_SECRET", system.env["KERNEL_SECRET"])
    flow = Dataflow()
    build(flow)
    with pytest.raises(Exception) as raised:
        run(flow, coordinator=f"127.0.0.1:{system.port}")
    return str(raised.value)


def test_a_second_publisher_under_run_says_the_name_is_published(system, monkeypatch):  # noqa: F811
    said = _refused(system, monkeypatch, lambda flow: flow.from_iterable([1, 2]).publish(system.topic))
    assert "shutdown" not in said, said
    assert f"raised TopicError: topic '{system.topic}' is published by app:" in said, said


def test_a_service_under_run_on_a_published_name_says_so(system, monkeypatch):  # noqa: F811
    said = _refused(system, monkeypatch, lambda flow: flow.serve(system.topic, lambda request: request))
    assert "shutdown" not in said, said
    assert f"raised TopicError: topic '{system.topic}' is published by app:" in said, said
