"""Session 36: scheduling knobs refused at the call when they cannot be meant.

A budget is how long the kernel holds the event loop: `budget=10**9` was
taken, and a run then held its loop (the host's tasks, a Ctrl-C, timers)
for the whole run."""

import asyncio
import math

import pytest

from kernel import Dataflow, Kernel, run, run_async

MAX_BUDGET = 1.0  # kernel.scheduling._scheduler.MAX_BUDGET (literal: the test must load without the fix)


def _flow():
    flow = Dataflow("knobs")
    out = flow.from_iterable(range(10)).map(lambda x: x + 1).collect()
    return flow, out


@pytest.mark.parametrize("budget", [10**9, 1e300, 1.5, MAX_BUDGET * 2])
@pytest.mark.parametrize("cores", [1, 2])
def test_an_absurd_budget_is_refused_at_the_call(budget, cores):
    flow, out = _flow()
    with pytest.raises(ValueError, match=r"budget must be .*at most 1 .*got"):
        run(flow, cores=cores, budget=budget)
    assert out.items == []


def test_an_absurd_budget_is_refused_by_run_async_and_kernel():
    flow, _ = _flow()
    with pytest.raises(ValueError, match="budget must be"):
        asyncio.run(run_async(flow, budget=10**9))
    with pytest.raises(ValueError, match="budget must be"):
        Kernel(budget=5.0)


@pytest.mark.parametrize("budget", [0, -1, math.nan, math.inf, "x", True, None])
def test_a_budget_that_is_no_positive_number_is_refused(budget):
    flow, _ = _flow()
    with pytest.raises(ValueError, match="budget must be a positive number of seconds"):
        run(flow, budget=budget)


@pytest.mark.parametrize("budget", [1e-9, 0.001, MAX_BUDGET])
def test_budgets_up_to_the_limit_run(budget):
    flow, out = _flow()
    run(flow, budget=budget)
    assert out.items == list(range(1, 11))


def test_a_virtual_clocks_budget_is_in_its_own_time():
    """A VirtualClock's budget holds no real loop: a test's "budget no chain
    reaches" (1e9) stays allowed; an infinite one is refused all the same."""
    from kernel import VirtualClock

    flow, out = _flow()
    run(flow, clock=VirtualClock(), budget=1e9)
    assert out.items == list(range(1, 11))
    with pytest.raises(ValueError, match="budget must be"):
        run(flow, clock=VirtualClock(), budget=math.inf)


@pytest.mark.parametrize("cores", [1, 2])
def test_an_empty_state_dir_is_refused_as_such(cores, tmp_path, monkeypatch):
    """state_dir="" was refused as "the directory is read-only (no permission
    to make files in it)", of a writable working directory."""
    monkeypatch.chdir(tmp_path)
    flow, _ = _flow()
    with pytest.raises(ValueError, match="state_dir is an empty path"):
        run(flow, cores=cores, state_dir="")
    with pytest.raises(ValueError, match="state_dir is an empty path"):
        asyncio.run(run_async(flow, cores=cores, state_dir=""))
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_refuses_an_empty_state_dir(tmp_path):
    import subprocess
    import sys

    pipeline = tmp_path / "p.py"
    pipeline.write_text("from kernel import Dataflow\n"
                        "flow = Dataflow('p')\nflow.from_iterable([1]).collect()\n")
    done = subprocess.run([sys.executable, "-m", "kernel.run", str(pipeline), "--state-dir", ""],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "state_dir is an empty path" in done.stderr
