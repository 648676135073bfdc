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

from kernel.scheduling._clock import Clock, SystemClock, VirtualClock
from kernel.scheduling._kernel import Kernel, KernelContext, KernelStatistics, cooperate, current_kernel
from kernel.scheduling._scheduler import LATENCY, THROUGHPUT, Scheduler, SchedulerStatistics

__all__ = [
    "LATENCY",
    "THROUGHPUT",
    "Clock",
    "Kernel",
    "KernelContext",
    "KernelStatistics",
    "Scheduler",
    "SchedulerStatistics",
    "SystemClock",
    "VirtualClock",
    "cooperate",
    "current_kernel",
]
