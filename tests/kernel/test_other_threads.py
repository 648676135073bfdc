"""The process's other threads get the GIL while a kernel runs in it
(kernel/scheduling/_handover.py); the thread beside `run()` is
tests/test_claims.py's "Other threads of your process". Each flow runs
until the thread has done its share (the `thread_beside_a_kernel`
fixture, tests/conftest.py)."""

from __future__ import annotations

import asyncio

from kernel import run_async


async def test_a_run_in_executor_call_finishes_while_a_kernel_runs_on_the_callers_loop(
        thread_beside_a_kernel):
    beside = thread_beside_a_kernel
    run_task = asyncio.create_task(run_async(beside.busy_flow()))
    await asyncio.sleep(0.05)  # the kernel busy first
    try:
        await asyncio.get_running_loop().run_in_executor(None, beside.ticks)
    finally:
        beside.done.set()
        await run_task
    beside.check()
