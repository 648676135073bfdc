"""A run's options: their defaults and the checks of their values, apart
from the plan (`_plan`, whose dataclasses bring `inspect`) and the facade
(which imports the run's machinery). `python -m kernel.run` checks its
command line with these before it imports anything it would run with: a
mistyped option costs Python's start-up, not the fluent API's ~0.2 s.
`plan_for` checks a run's options with the same functions."""

from __future__ import annotations

from kernel.net._environment import HEARTBEAT, MIN_HEARTBEAT

# A pipeline allocates short-lived containers (batches, pairs) by the
# million; with CPython's default gen-0 threshold (700 allocations) the
# collector runs thousands of times per second and costs 15-20% of word
# count's time (benches/pipelines.py). A blocking run and a kernel process
# own their thread's work, so they raise the threshold while they run.
DEFAULT_GC_THRESHOLD = 50_000
DEFAULT_EPOCH_INTERVAL = 1.0
DEFAULT_STARTUP_TIMEOUT = 30.0  # seconds a cluster's processes have to find each other
# Seconds between a cluster link's liveness checks: a peer silent for two of
# them is dead; at least MIN_HEARTBEAT. `heartbeat=None` (a run's default):
# KERNEL_HEARTBEAT where set, as for every link, else this. Read when a run
# is planned (`heartbeat_from_environment`), not here at import: set in
# os.environ after `import kernel` (a notebook, a test), it was ignored.
DEFAULT_HEARTBEAT = HEARTBEAT

# The most kernels one process runs. Every ordered pair of its kernels has a
# ring, one mapping of 4 MiB address space each (`_cores.RING_BYTES`): 100
# kernels make 9,900 of them, a sixth of Linux's default limit of 65,530
# mappings a process (vm.max_map_count: 256 kernels need 65,280, and with the
# interpreter's own ones fail as a bare MemoryError, as a million did). And a
# cluster's gate tells a process's kernels their records in one atomic pipe
# write (`_cores._open_gate`): 100 records of 38 bytes fit PIPE_BUF (4,096;
# a test checks it), where past 107 a kernel could read a short record and
# wait for ever. More kernels on one machine: a cluster of several
# processes on it (`peers=`).
MAX_CORES = 100


def check_core_count(cores: int) -> None:
    """A whole number of kernels from 1 to MAX_CORES (`check_cores` also
    warns of more kernels than CPUs)."""
    if not isinstance(cores, int) or isinstance(cores, bool) or cores < 1:
        raise ValueError(f"cores must be a positive int, got {cores!r}")
    if cores > MAX_CORES:
        raise ValueError(f"cores must be at most {MAX_CORES} (kernels in one process: each pair of them has "
                         f"a ring of shared memory), got {cores!r}; for more on one machine run a cluster "
                         "of several processes on it (peers=, --peers)")


def check_epoch_interval(epoch_interval) -> None:
    if isinstance(epoch_interval, bool) or not (isinstance(epoch_interval, (int, float))
                                                and 0 < epoch_interval < float("inf")):
        raise ValueError(f"epoch_interval must be a positive number of seconds, got {epoch_interval!r}")


def check_heartbeat(heartbeat) -> None:
    """A cluster link's heartbeat: a finite number of seconds, at least
    MIN_HEARTBEAT (a shorter one gave up healthy peers)."""
    check_seconds("heartbeat", heartbeat)
    if heartbeat < MIN_HEARTBEAT:
        raise ValueError(f"heartbeat must be a positive number of seconds, at least {MIN_HEARTBEAT:g} "
                         f"(a peer silent for two heartbeats is lost: a shorter one loses healthy "
                         f"peers), got {heartbeat!r}")


def check_seconds(name: str, value) -> None:
    """A positive, finite number of seconds. Checked with or without peers:
    a bad startup_timeout (NaN, -1) was ignored until peers were added."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not (number and 0 < value < float("inf")):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
