"""Scheduling orders, tick budgets and task-class fairness, exact under a virtual clock."""

from __future__ import annotations

import asyncio
import logging
import math
import sys

import pytest

from kernel import LATENCY, THROUGHPUT, Kernel, VirtualClock


class Act:
    """A test activation: records its name in `trace`, then runs `body`."""

    def __init__(self, name, trace, body=None):
        self.name = name
        self.trace = trace
        self.body = body

    def activate(self):
        self.trace.append(self.name)
        if self.body:
            self.body()


async def run_kernel(kernel, setup):
    """Run `setup(kernel)` at kernel start and join. A hold keeps the kernel
    alive until the setup's work has drained (released by the last act)."""
    kernel.at_start(lambda: setup(kernel))
    await kernel.join()


async def test_work_readied_during_a_tick_runs_in_a_later_tick():
    trace = []
    kernel = Kernel(clock=VirtualClock())

    def setup(k):
        c = Act("c", trace)
        a = Act("a", trace, lambda: k.ready(c))
        b = Act("b", trace)
        k.ready(a)
        k.ready(b)

    await run_kernel(kernel, setup)
    # c became ready while a ran, so it waits behind b (which was ready when
    # the tick began) even though it was readied first.
    assert trace == ["a", "b", "c"]
    stats = kernel.statistics()
    assert stats.ticks == 2
    assert stats.slices == 1  # both ticks fit in one budget: no loop round trip


async def test_a_spent_budget_hands_the_loop_to_the_host_between_activations():
    trace = []
    clock = VirtualClock()
    kernel = Kernel(clock=clock, budget=0.001)

    def costly(name):
        return Act(name, trace, lambda: clock.advance(0.0004))

    async def host():
        for _ in range(3):
            trace.append("host")
            await asyncio.sleep(0)

    def setup(k):
        for name in "abcde":
            k.ready(costly(name))

    host_task = asyncio.create_task(host())
    await run_kernel(kernel, setup)
    await host_task
    # The host task was started first. Then, at 0.4 ms each against a 1 ms
    # budget, a, b, c spend 1.2 ms and the loop runs the host; d and e
    # (already ready, same tick) go first in the next slice.
    assert trace == ["host", "a", "b", "c", "host", "d", "e", "host"]
    assert kernel.statistics().slices == 2


async def test_self_rescheduling_activation_cannot_starve_the_loop():
    trace = []
    clock = VirtualClock()
    # powers of two keep the virtual clock's sums exact
    kernel = Kernel(clock=clock, budget=2**-10)
    runs = {"n": 0}

    def spin(k):
        def body():
            runs["n"] += 1
            clock.advance(2**-14)
            if runs["n"] < 80:
                k.ready(act)

        act = Act("spin", [], body)
        return act

    async def host():
        while runs["n"] < 80:
            trace.append(runs["n"])
            await asyncio.sleep(0)

    host_task = asyncio.create_task(host())
    await run_kernel(kernel, lambda k: k.ready(spin(k)))
    await host_task
    # Each slice gets exactly 16 runs of 1/16 of the budget; the host runs at
    # every slice boundary.
    assert trace == [0, 16, 32, 48, 64]


async def test_task_classes_share_cpu_time_by_their_shares():
    clock = VirtualClock()
    kernel = Kernel(clock=clock, budget=0.001, shares={LATENCY: 3, THROUGHPUT: 1})
    counts = {LATENCY: 0, THROUGHPUT: 0}
    limit = 400

    def worker(k, cls):
        def body():
            counts[cls] += 1
            clock.advance(0.0001)
            if sum(counts.values()) < limit:
                k.ready(act, cls)

        act = Act(cls, [], body)
        return act

    def setup(k):
        k.ready(worker(k, THROUGHPUT), THROUGHPUT)
        k.ready(worker(k, LATENCY), LATENCY)

    await run_kernel(kernel, setup)
    busy = kernel.statistics().busy_time
    # both workers are queued when the limit is reached: one may run once more
    assert limit <= counts[LATENCY] + counts[THROUGHPUT] <= limit + 1
    assert counts[LATENCY] / counts[THROUGHPUT] == pytest.approx(3.0, rel=0.05)
    assert busy[LATENCY] / busy[THROUGHPUT] == pytest.approx(3.0, rel=0.05)


async def test_latency_work_preempts_the_rest_of_a_throughput_tick():
    trace = []
    kernel = Kernel(clock=VirtualClock())

    def setup(k):
        urgent = Act("urgent", trace)
        k.ready(Act("t1", trace, lambda: k.ready(urgent, LATENCY)))
        k.ready(Act("t2", trace))
        k.ready(Act("t3", trace))

    await run_kernel(kernel, setup)
    assert trace == ["t1", "urgent", "t2", "t3"]


async def test_an_idle_class_does_not_bank_credit():
    clock = VirtualClock()
    kernel = Kernel(clock=clock, budget=0.001, shares={LATENCY: 1, THROUGHPUT: 1})
    order = []

    def setup(k):
        # The throughput class runs alone for 10 ms of virtual time ...
        state = {"n": 0}

        def thr_body():
            state["n"] += 1
            order.append("T")
            clock.advance(0.0005)
            if state["n"] == 20:
                k.ready(lat, LATENCY)
            if state["n"] < 30:
                k.ready(thr, THROUGHPUT)

        def lat_body():
            order.append("L")
            clock.advance(0.0005)
            if order.count("L") < 10:
                k.ready(lat, LATENCY)

        thr = Act("thr", [], thr_body)
        lat = Act("lat", [], lat_body)
        k.ready(thr, THROUGHPUT)

    await run_kernel(kernel, setup)
    # ... then, once the latency class wakes, the two alternate instead of the
    # latency class running 10 ms in a row to "catch up".
    after_wake = "".join(order[20:36])
    assert "LLL" not in after_wake and "TTT" not in after_wake
    assert order.count("L") == 10 and order.count("T") == 30


async def test_stall_detector_names_the_activation(caplog):
    clock = VirtualClock()
    kernel = Kernel(clock=clock, stall_threshold=0.025)

    def setup(k):
        k.ready(Act("slow-operator", [], lambda: clock.advance(0.030)))
        k.ready(Act("quick-operator", [], lambda: clock.advance(0.001)))

    with caplog.at_level(logging.WARNING, logger="kernel"):
        await run_kernel(kernel, setup)
    stalls = [r for r in caplog.records if "stall" in r.getMessage()]
    assert len(stalls) == 1
    assert "slow-operator" in stalls[0].getMessage()
    assert "30.0 ms" in stalls[0].getMessage()
    assert stalls[0].kernel == 0


async def test_an_activation_within_a_budget_longer_than_the_stall_threshold_is_no_stall(caplog):
    # budget=0.2 (at most MAX_BUDGET): sources size their batches to fill it,
    # and each batch was reported as a stall of the 25 ms threshold
    clock = VirtualClock()
    kernel = Kernel(clock=clock, budget=0.1, stall_threshold=0.025)

    def setup(k):
        k.ready(Act("within-the-budget", [], lambda: clock.advance(0.090)))
        k.ready(Act("past-the-budget", [], lambda: clock.advance(0.110)))

    with caplog.at_level(logging.WARNING, logger="kernel"):
        await run_kernel(kernel, setup)
    stalls = [r.getMessage() for r in caplog.records if "stall" in r.getMessage()]
    assert len(stalls) == 1 and "past-the-budget" in stalls[0], stalls
    assert "ran 110.0 ms without yielding (threshold 100.0 ms)" in stalls[0], stalls


async def test_an_activation_that_raises_fails_the_run_and_stops_the_queue():
    trace = []
    kernel = Kernel(clock=VirtualClock())

    def boom():
        raise ValueError("bad")

    def setup(k):
        k.ready(Act("a", trace))
        k.ready(Act("b", trace, boom))
        k.ready(Act("c", trace))

    from kernel import ActivationError

    with pytest.raises(ActivationError, match="b raised ValueError: bad") as info:
        await run_kernel(kernel, setup)
    assert isinstance(info.value.__cause__, ValueError)
    assert trace == ["a", "b"]


async def test_an_activation_that_calls_sys_exit_fails_the_run_as_any_error():
    """sys.exit(0) in an activation passed through as the run's end: `join`
    raised SystemExit(0), which a process takes for success."""
    trace = []
    kernel = Kernel(clock=VirtualClock())

    def setup(k):
        k.ready(Act("a", trace))
        k.ready(Act("b", trace, lambda: sys.exit(0)))
        k.ready(Act("c", trace))

    from kernel import ActivationError

    with pytest.raises(ActivationError) as info:
        await run_kernel(kernel, setup)
    assert str(info.value) == "b raised SystemExit: 0"
    assert isinstance(info.value.__cause__, SystemExit)
    assert trace == ["a", "b"]


async def test_a_keyboard_interrupt_in_an_activation_ends_the_run_as_itself():
    trace = []
    kernel = Kernel(clock=VirtualClock())
    interrupt = KeyboardInterrupt()

    def ctrl_c():
        raise interrupt

    def setup(k):
        k.ready(Act("a", trace))
        k.ready(Act("b", trace, ctrl_c))
        k.ready(Act("c", trace))

    with pytest.raises(KeyboardInterrupt) as info:
        await run_kernel(kernel, setup)
    assert info.value is interrupt
    assert trace == ["a", "b"]


def test_invalid_scheduler_settings_are_refused():
    with pytest.raises(ValueError, match="unknown task class"):
        Kernel(shares={"urgent": 1})._attach(asyncio.new_event_loop())
    with pytest.raises(ValueError, match="shares"):
        Kernel(shares={LATENCY: 0})._attach(asyncio.new_event_loop())
    with pytest.raises(ValueError, match="budget"):
        Kernel(budget=0)._attach(asyncio.new_event_loop())


@pytest.mark.parametrize("options", [
    {"budget": math.nan}, {"budget": "x"}, {"stall_threshold": -1}, {"stall_threshold": "x"},
    {"shares": 5}, {"shares": {LATENCY: math.nan}}, {"epoch_interval": -5}, {"epoch_interval": math.nan},
])
def test_run_refuses_bad_options_before_it_starts(options):
    # NaN budget never handed the loop back, a str one failed as a bare TypeError in the first
    # activation, shares=5 as an AttributeError, and epoch_interval was ignored without a state_dir.
    from kernel import Dataflow, run

    flow = Dataflow()
    flow.from_iterable([1]).collect()
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        run(flow, **options)
