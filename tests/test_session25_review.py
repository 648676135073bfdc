"""Session review of faf7dd1..HEAD: each test asserts the correct
behaviour and failed when written (one bug each).

* `check_arity` follows `__wrapped__` (inspect.signature's default): a
  decorator made with functools.wraps that changes how its function is
  called (`fn(*record)`) is refused although the step's call works;
* the async refusal for per-record steps misses a callable instance with
  `async def __call__` (a sink's records are dropped, never awaited) and
  the window aggregates' reduce/fold (coroutine objects come out as results);
* `_check_outputs` refuses a flow read for its `from_files(...).skipped_count`;
* `_listen_host` takes "LOCALHOST" for another host name: every interface;
* `_placed` accepts SLURM_DISTRIBUTION=arbitrary with one task a node
  (the README says arbitrary is refused; its task order is the hostfile's).
"""

from __future__ import annotations

import functools

import pytest

import operators as ops
from kernel import Dataflow, run
from kernel.cli._resource_managers import ResourceManagerError, from_slurm
from net._relay import _listen_host


def _unpacked(fn):
    """A decorator that calls `fn(*record)`: its wrapper takes one record."""
    @functools.wraps(fn)
    def wrapper(record):
        return fn(*record)
    return wrapper


@_unpacked
def _add(a, b):
    return a + b


def test_map_accepts_a_functools_wraps_decorator_that_changes_the_arity():
    flow = Dataflow()
    out = flow.from_iterable([(1, 2), (3, 4)]).map(_add).collect()  # refused: "add(a, b) cannot take that"
    run(flow)
    assert out.items == [3, 7]


class _AsyncSink:
    def __init__(self):
        self.seen = []

    async def __call__(self, record):
        self.seen.append(record)


def test_sink_refuses_a_callable_instance_whose_call_is_async():
    """Accepted, each record's coroutine was dropped unawaited: nothing
    reached the sink (as for `sink(async_fn)`, which is refused)."""
    flow = Dataflow()
    with pytest.raises(TypeError, match="async"):
        flow.from_iterable([1, 2]).sink(_AsyncSink())


async def _async_add(a, b):
    return a + b


@pytest.mark.parametrize("aggregate", ["reduce", "fold"])
def test_window_reduce_and_fold_refuse_async_functions(aggregate):
    """Accepted: the window's result was a coroutine object, never awaited."""
    flow = Dataflow()
    keyed = flow.from_iterable([("k", 1.0, 1)], timestamp=lambda r: r[1]).key_by(lambda r: r[0])
    windowed = keyed.map_values(lambda r: r[2]).window(ops.Tumbling(10.0))
    with pytest.raises(TypeError, match="async"):
        if aggregate == "reduce":
            windowed.reduce(_async_add)
        else:
            windowed.fold(0, _async_add)


def test_a_flow_read_for_its_skipped_count_is_not_refused(tmp_path):
    """`from_files(..., on_error="skip")` counting malformed lines is an
    output (`.skipped_count.value`): the flow was refused as having none."""
    (tmp_path / "a.jsonl").write_text('{"n": 1}\nnot json\n')
    flow = Dataflow()
    files = flow.from_files(tmp_path / "*.jsonl", format="jsonl", on_error="skip")
    run(flow)
    assert files.skipped_count.value == 1


@pytest.mark.parametrize("host", ["LOCALHOST", "Localhost"])
def test_localhost_in_any_case_listens_on_loopback_not_every_interface(host):
    """Host names are case-insensitive: "LOCALHOST" resolves to loopback,
    but the process listened on every interface (None), as for a node name."""
    assert _listen_host(host) is not None


def test_slurm_arbitrary_distribution_with_one_task_a_node_is_refused():
    """README: "`plane` and `arbitrary` are refused". With one task a node
    `_placed` returns block's places before looking at the distribution:
    arbitrary's task order follows SLURM_HOSTFILE, not the sorted node
    list, so task 0 may be on n2 and was told it listens on n1."""
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_NODELIST": "n[1-2]",
           "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_DISTRIBUTION": "arbitrary"}
    with pytest.raises(ResourceManagerError, match="arbitrary"):
        from_slurm(env)
