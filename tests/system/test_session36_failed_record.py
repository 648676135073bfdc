"""Session 36: a job failed by a user function names the record it raised
on, as `kernel run` does (`  on record: 7` on the line after its `error:`
line). The job's message, in `status` and `submit --wait`, was that one
line: the step and the function, not the record."""

from __future__ import annotations

import pytest
from _system import a_system
from test_system import write

RAISES = """\
from kernel import Dataflow

def check(n):
    if n == 777:
        raise ValueError({message!r})
    return n

flow = Dataflow("raises")
flow.from_iterable(range(1000)).key_by(lambda n: n % 7).map_values(check).sink(id)
"""


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    with a_system(tmp_path_factory.mktemp("system"), executors=2, cores=2) as system:
        yield system


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("message", ["bad", "first line\nsecond line"])
def test_a_failed_jobs_message_names_the_record(system, tmp_path, processes, message):
    pipeline = write(tmp_path / "raises.py", RAISES.format(message=message))
    done = system.cli("submit", pipeline, "--processes", processes, "--cores", 2, "--wait")
    assert done.returncode == 1, done.stderr
    job = done.stdout.splitlines()[0]
    state = system.job(job)
    assert (state["status"], state["restarts"]) == ("failed", 0), state
    first = message.splitlines()[0]
    said = f"function 'check' raised ValueError: {first}; on record: (0, 777)"
    assert state["message"].endswith(said), state
    assert done.stdout.splitlines()[1] == f"{job} failed: {state['message']}"
