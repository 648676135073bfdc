"""The run plan: everything that decides how a run executes, in one value.

`run`, `run_async` and the command line each build a `RunPlan`
(`kernel._facade.plan_for`: it checks the options, opens the snapshot store
and the cluster's configuration), and `execute` / `execute_async`
(`_execute.py`) carry it out. The mode follows from the plan, as timely's
three configurations: one kernel in this thread, one pinned kernel process
per core, or one process of a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# (defined apart, for the command line's checks before it imports the run's machinery)
from kernel.execution._run_options import (  # noqa: F401  (the plan's names for them too)
    DEFAULT_EPOCH_INTERVAL,
    DEFAULT_GC_THRESHOLD,
    DEFAULT_HEARTBEAT,
    DEFAULT_STARTUP_TIMEOUT,
    MIN_HEARTBEAT,
)

PROGRESS_INTERVAL = 0.5  # seconds between two calls of a plan's `progress`

THREAD, PROCESS, CLUSTER = "thread", "process", "cluster"


@dataclass(frozen=True)
class KernelOptions:
    """How each kernel schedules (see `kernel.lowlevel.Kernel`)."""

    clock: Any = None  # None: the system clock
    budget: float = 0.001
    shares: dict[str, float] | None = None
    stall_threshold: float = 0.025

    def as_kwargs(self) -> dict:
        return {"clock": self.clock, "budget": self.budget, "shares": self.shares,
                "stall_threshold": self.stall_threshold}


@dataclass(frozen=True)
class RunPlan:
    """How one run executes.

    `snapshots` (with a `state_dir`) is what the run starts from and where it
    writes its epochs: `local()` gives a one-kernel coordinator,
    `for_processes()` what kernel processes need (the facade opens it: the
    execution layer never imports `kernel.state`). `cluster` (a
    `ClusterPlan`) makes this process one of several. `gc_threshold` is the
    generation-0 GC threshold of every thread that runs kernels and of a
    blocking caller (None: leave GC alone). `dashboard`, an address,
    serves the run's metrics in Prometheus's format and its dashboard while
    it runs; `progress` is told them (the command line's live line)."""

    cores: int = 1
    kernel: KernelOptions = field(default_factory=KernelOptions)
    gc_threshold: int | None = DEFAULT_GC_THRESHOLD
    snapshots: Any = None
    cluster: Any = None
    dashboard: tuple[str, int] | None = None  # (host, port): serve /metrics there (kernel.metrics)
    # progress(snapshots, final): called with every kernel's metrics snapshot
    # every PROGRESS_INTERVAL while the run runs, and once (final=True) at its end
    progress: Any = None

    @property
    def observed(self) -> bool:
        """Whether the kernels count their records (metrics, for a dashboard or progress)."""
        return self.dashboard is not None or self.progress is not None

    @property
    def mode(self) -> str:
        if self.cluster is not None:
            return CLUSTER
        return PROCESS if self.cores > 1 else THREAD
