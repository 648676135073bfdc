"""Session 38: a heartbeat too short for a healthy peer is refused at the call.

A cluster link pings a peer it heard nothing from for one heartbeat and
gives it up after a second: `heartbeat=1e-4` was taken, and a two-process
run on one machine failed at once (`process 1 did not answer for 0.0002 s
(peer dead or network cut)`); 0.01 failed one run in three on a loaded
machine. Refused like the other options, with or without peers."""

import asyncio
import subprocess
import sys

import pytest

from kernel import Dataflow, run, run_async

MIN_HEARTBEAT = 0.1  # kernel.execution._plan.MIN_HEARTBEAT (literal: the test must load without the fix)
TOO_SHORT = r"heartbeat must be a positive number of seconds, at least 0\.1 .*got "


def _flow():
    flow = Dataflow("heartbeats")
    out = flow.from_iterable(range(5)).collect()
    return flow, out


@pytest.mark.parametrize("heartbeat", [1e-4, 0.01, 0.099])
def test_a_heartbeat_too_short_for_a_healthy_peer_is_refused(heartbeat):
    flow, out = _flow()
    with pytest.raises(ValueError, match=TOO_SHORT + repr(heartbeat)):
        run(flow, heartbeat=heartbeat)
    with pytest.raises(ValueError, match=TOO_SHORT):
        run(flow, heartbeat=heartbeat, process_id=0, peers="127.0.0.1:7001", secret="s")
    with pytest.raises(ValueError, match=TOO_SHORT):
        asyncio.run(run_async(flow, heartbeat=heartbeat))
    assert out.items == []


def test_the_shortest_heartbeat_runs():
    flow, out = _flow()
    run(flow, heartbeat=MIN_HEARTBEAT)
    assert out.items == [0, 1, 2, 3, 4]


def test_the_command_line_refuses_a_heartbeat_too_short(tmp_path):
    pipeline = tmp_path / "p.py"
    pipeline.write_text("from kernel import Dataflow\n"
                        "flow = Dataflow('p')\nflow.from_iterable([1]).collect()\n")
    done = subprocess.run([sys.executable, "-m", "kernel.run", str(pipeline), "--heartbeat", "0.0001"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "heartbeat must be a positive number of seconds, at least 0.1" in done.stderr
