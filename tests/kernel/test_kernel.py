"""The kernel's low-level API: spawn, join, cooperate, context, and sharing the host loop."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import pytest

from kernel import (
    Dataflow,
    Kernel,
    TaskError,
    VirtualClock,
    cooperate,
    current_kernel,
    run,
    run_async,
)


async def test_join_waits_for_every_spawned_task():
    done = []

    async def worker(n):
        for _ in range(n):
            await asyncio.sleep(0)
        done.append(n)

    kernel = Kernel()
    kernel.spawn(worker(3))  # before the kernel runs: started when it does
    kernel.spawn(worker(1))
    await kernel.join()
    assert sorted(done) == [1, 3]


async def test_a_raising_task_fails_the_run_and_cancels_the_others():
    cancelled = asyncio.Event()

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def broken():
        await asyncio.sleep(0)
        raise KeyError("missing")

    kernel = Kernel()
    kernel.spawn(forever(), name="forever")
    kernel.spawn(broken(), name="broken")
    with pytest.raises(TaskError, match="task 'broken' raised KeyError") as info:
        await asyncio.wait_for(kernel.join(), 5)
    assert isinstance(info.value.__cause__, KeyError)
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_current_kernel_is_set_in_tasks_and_reset_after_join():
    seen = []

    async def probe():
        seen.append(current_kernel())

    kernel = Kernel(index=3, peers=4)
    kernel.spawn(probe())
    assert current_kernel() is None
    await kernel.join()
    assert seen == [kernel]
    assert current_kernel() is None
    assert (kernel.context.index, kernel.context.peers) == (3, 4)


@pytest.mark.parametrize("how", ["module-level", "captured"])
async def test_cooperate_is_not_a_yield_while_the_budget_lasts(how):
    """While the budget lasts, 1000 cooperate() calls run back to back: a
    host task that wants the loop at every turn gets none between them."""
    trace = []

    async def host():
        while True:
            trace.append("host")
            await asyncio.sleep(0)

    async def worker():
        coop = cooperate if how == "module-level" else current_kernel().cooperate
        for i in range(1000):
            trace.append(i)
            await coop()

    kernel = Kernel(clock=VirtualClock(), budget=1.0)  # the virtual clock never moves
    host_task = asyncio.create_task(host())
    kernel.spawn(worker())
    await kernel.join()
    host_task.cancel()
    first = trace.index(0)
    assert "host" in trace[:first]  # the host was running, and wanted every turn
    assert trace[first : first + 1000] == list(range(1000))


async def test_cooperate_yields_once_the_budget_is_spent():
    clock = VirtualClock()
    trace = []

    async def worker():
        for i in range(64):
            clock.advance(0.0005)  # half the budget per step
            trace.append(i)
            await cooperate()

    async def host():
        for _ in range(200):
            trace.append("h")
            await asyncio.sleep(0)

    kernel = Kernel(clock=clock, budget=0.001)
    host_task = asyncio.create_task(host())
    kernel.spawn(worker())
    await kernel.join()
    host_task.cancel()
    worker_steps = [i for i, item in enumerate(trace) if item != "h"]
    # cooperate() reads the clock every 16th call; with the budget long spent
    # by then, it yields exactly at those calls: runs of 16 steps between
    # host turns.
    runs, current = [], 0
    for a, b in itertools.pairwise(worker_steps):
        current += 1
        if b != a + 1:
            runs.append(current)
            current = 0
    assert runs[:3] == [16, 16, 16]


async def test_cooperate_outside_a_kernel_is_a_plain_yield():
    trace = []
    asyncio.get_running_loop().call_soon(lambda: trace.append("other"))
    await cooperate()
    assert trace == ["other"]


async def test_logger_tags_records_with_the_kernel_index(caplog):
    kernel = Kernel(index=2, peers=3)
    with caplog.at_level(logging.INFO, logger="kernel"):
        kernel.context.logger.info("hello")
    (record,) = caplog.records
    assert record.kernel == 2
    assert record.getMessage() == "[kernel 2] hello"


async def test_host_loop_stays_responsive_under_run_async():
    """A large pipeline on the caller's loop: the host's heartbeat keeps
    beating, many times, with no long gap."""
    data = range(1_000_000)
    flow = Dataflow("big")
    out = (
        flow.from_iterable(data)
        .map(lambda x: x * 3)
        .filter(lambda x: x % 2 == 0)
        .key_by(lambda x: x % 100)
        .count()
        .collect()
    )
    beats = []
    stop = asyncio.Event()

    async def heartbeat():
        while not stop.is_set():
            beats.append(time.perf_counter())
            await asyncio.sleep(0)

    hb = asyncio.create_task(heartbeat())
    started = time.perf_counter()
    await run_async(flow)
    finished = time.perf_counter()
    stop.set()
    await hb
    during = [t for t in beats if started <= t <= finished]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(during) > 100  # the host ran all along, not just at the end
    # The budget is 1 ms; 50 ms leaves room for a noisy shared CI machine
    # while still catching a pipeline that holds the loop (this one runs
    # for about a second).
    assert max(gaps) < 0.050
    assert sum(n for _, n in out.items) == 500_000


async def test_run_inside_a_running_loop_says_to_use_run_async():
    with pytest.raises(RuntimeError, match="run_async"):
        run(Dataflow())


def test_an_empty_dataflow_runs_and_ends():
    run(Dataflow("empty"))


def test_cores_must_be_a_positive_int():
    with pytest.raises(ValueError, match="cores"):
        run(Dataflow(), cores=0)


@pytest.mark.parametrize("how", ["module-level", "captured"])
async def test_the_budget_is_shared_by_all_tasks_of_a_kernel(how):
    """N busy tasks hold the loop about one budget, not N budgets; a
    `kernel.cooperate` captured while the budget lasted sees it spent too."""
    clock = VirtualClock()
    trace = []
    tasks = 10

    async def busy(n):
        coop = cooperate if how == "module-level" else current_kernel().cooperate
        for _ in range(100):
            clock.advance(0.0001)  # a tenth of the budget per step
            trace.append(n)
            await coop()

    async def host():
        while True:
            trace.append("host")
            await asyncio.sleep(0)

    kernel = Kernel(clock=clock, budget=0.001)
    host_task = asyncio.create_task(host())
    for n in range(tasks):
        kernel.spawn(busy(n))
    await kernel.join()
    host_task.cancel()
    steps_between_host_turns, current = [], 0
    for item in trace:
        if item == "host":
            steps_between_host_turns.append(current)
            current = 0
        else:
            current += 1
    # The clock is read every 16th cooperate(); once the budget is found
    # spent every task yields at its next call: at most 16 + one step per
    # task between two host turns (a per-task budget would allow 10 x 16).
    assert max(steps_between_host_turns) <= 16 + tasks
