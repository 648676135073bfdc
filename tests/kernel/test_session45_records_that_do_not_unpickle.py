"""Records that pickle but whose pickle does not rebuild them (session 45).

The classic case is an Exception subclass whose __init__ takes other
arguments than it hands to Exception.__init__: `pickle.dumps` works, and
`pickle.loads` calls `Reading(*args)` with the wrong arguments. A flow of
them runs on one kernel; on several, a record that crossed kernels failed
as `ActivationError: ring reader raised TypeError: Reading.__init__()
missing 1 required positional argument`, and one collected back to the
caller as the bare TypeError, neither naming a step nor saying why; a
step's result() value so, as the bare TypeError too."""

from __future__ import annotations

import asyncio
import os
import pickle
import re

import pytest

from kernel import Dataflow, Operator, run, run_async
from kernel.execution._results import ResultNotPicklable
from kernel.execution._supervisor import KernelProcessError


class Reading(Exception):
    """An error kept as a record (a dead-letter stream): its pickle calls
    Reading(message), one argument short."""

    def __init__(self, sensor: int, value: int) -> None:
        super().__init__(f"sensor {sensor} read {value}")
        self.sensor = sensor


def _readings(flow: Dataflow):
    return flow.from_iterable(range(40)).map(lambda n: Reading(n % 5, n), name="as readings")


def test_the_records_do_not_survive_their_pickle():
    # (the premise: what the kernels do with the records is the only way they fail)
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        pickle.loads(pickle.dumps(Reading(1, 2)))


def test_records_collected_on_one_kernel_come_back_as_they_are():
    flow = Dataflow("one")
    got = _readings(flow).collect()
    run(flow)
    assert [(r.sensor, str(r)) for r in got.items] == [(n % 5, f"sensor {n % 5} read {n}") for n in range(40)]


@pytest.mark.parametrize("cores", [2, 3])
def test_a_collected_record_that_does_not_unpickle_names_the_collect_and_says_why(cores):
    flow = Dataflow("collected")
    _readings(flow).collect(name="dead letters")
    with pytest.raises(ResultNotPicklable) as raised:
        run(flow, cores=cores)
    message = str(raised.value)
    assert message.startswith("dead letters: a record it collected on kernel ")
    assert "cannot be unpickled in the caller's process (TypeError: Reading.__init__() missing 1 " \
           "required positional argument: 'value')" in message
    assert "give its class a __reduce__ that rebuilds it" in message
    assert isinstance(raised.value.__cause__, TypeError)


@pytest.mark.parametrize("cores", [2, 3])
def test_a_record_that_crosses_kernels_and_does_not_unpickle_names_the_step_whose_output_crossed(cores):
    flow = Dataflow("crossing")
    per_sensor = _readings(flow).key_by(lambda r: r.sensor, name="by sensor")
    per_sensor.stateful_map(lambda seen, r: ((seen or 0) + 1, r.sensor)).collect()
    with pytest.raises(Exception) as raised:  # (kernel N failed: OperatorError ...)
        run(flow, cores=cores)
    message = str(raised.value)
    assert "operator 'by sensor (step 2)': function 'pickle.loads' raised TypeError: Reading.__init__() " \
           "missing 1 required positional argument: 'value'" in message
    assert "ring reader" not in message
    assert "give its class a __reduce__ that rebuilds it" in message


class _CountsAsReading(Operator):
    """A user's operator whose result() is a Reading."""

    def open(self, context):
        self.seen = 0

    def on_batch(self, port, batch):
        self.seen += len(batch)

    def result(self):
        return Reading(self.context.index, self.seen)


def _children() -> list[int]:
    with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as listing:
        return [int(pid) for pid in listing.read().split()]


def test_a_result_value_that_does_not_unpickle_names_the_kernel_and_says_why():
    flow = Dataflow("results")
    flow.from_iterable(range(10)).apply(_CountsAsReading, name="counts")
    before = _children()
    with pytest.raises(KernelProcessError) as raised:
        asyncio.run(run_async(flow, cores=2))
    assert re.fullmatch(
        r"kernel [01] handed back results that cannot be unpickled in the caller's process \(TypeError: "
        r"Reading.__init__\(\) missing 1 required positional argument: 'value'\): a step's result\(\) value "
        r".* give its class a __reduce__ that rebuilds it", str(raised.value))
    assert isinstance(raised.value.__cause__, TypeError)
    assert _children() == before  # (every kernel process gone, and waited for)
