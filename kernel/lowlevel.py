"""The low-level API: kernels, tasks and cooperation.

    from kernel.lowlevel import Kernel, cooperate

    async def worker():
        for chunk in chunks:
            crunch(chunk)
            await cooperate()     # ~free while the budget lasts

    kernel = Kernel()
    kernel.spawn(worker())
    await kernel.join()
"""

from kernel.scheduling._clock import SystemClock, VirtualClock
from kernel.scheduling._kernel import Kernel, KernelContext, cooperate, current_kernel
from kernel.scheduling._scheduler import LATENCY, THROUGHPUT, Scheduler

__all__ = [
    "LATENCY",
    "THROUGHPUT",
    "Kernel",
    "KernelContext",
    "Scheduler",
    "SystemClock",
    "VirtualClock",
    "cooperate",
    "current_kernel",
]
