"""The run queue: ready activations executed in bounded ticks.

Vocabulary
----------
activation
    Anything with an ``activate()`` method and a ``name``: an operator that has
    input waiting, a source that can produce, a waker for a low-level task.
    Scheduling one twice before it runs is the caller's job to avoid (each
    activation keeps its own "scheduled" flag), so the queues hold no
    duplicates and need no set.
tick
    One pass over the activations of one task class that were ready when the
    tick began. Whatever becomes ready during a tick (an operator that just
    received a batch, a source that asks to run again) waits for a later tick,
    so nothing can keep itself running by waking itself.
slice
    One event-loop callback. It runs ticks back to back until the time budget
    (default 1 ms) is spent or nothing is ready, then hands control back to the
    event loop so the host application's tasks and I/O run. Ticks inside one
    slice are what keeps activation latency far below an event-loop round trip
    (uvloop's `call_soon` hop alone costs ~0.7 us on our machines).

Task classes
------------
Two classes, ``LATENCY`` and ``THROUGHPUT``, each with its own queue and a
number of shares (glommio's and Seastar's task queues). When both have work,
the next tick goes to the class with the smallest virtual runtime (time spent
divided by shares), so over a busy stretch each class gets CPU time in
proportion to its shares. A class that wakes up after idling starts from the
smallest virtual runtime among busy classes instead of its stale one, so idling
does not bank credit. A throughput tick also ends early when latency work
arrives, so latency-sensitive activations wait at most one activation.

The stall detector logs any single activation that runs longer than
``stall_threshold`` (25 ms, as Seastar's blocked-reactor notice), naming it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

LATENCY = "latency"
THROUGHPUT = "throughput"
TASK_CLASSES = (LATENCY, THROUGHPUT)
DEFAULT_SHARES = {LATENCY: 2, THROUGHPUT: 1}
STALL_REPORT_INTERVAL = 10.0  # seconds between two stall reports of one activation


@dataclass(frozen=True)
class SchedulerStatistics:
    """What a scheduler has done so far (as trio's `RunStatistics`)."""

    slices: int  # event-loop callbacks: each ran ticks until the budget was spent
    ticks: int  # passes over what was ready when they began
    activations: int
    busy_time: dict[str, float]  # seconds spent running each task class
    queued: dict[str, int]  # activations waiting, per task class


class Activation(Protocol):
    name: str

    def activate(self) -> None: ...


class _TaskClass:
    __slots__ = ("busy_time", "idle", "name", "queue", "shares", "vruntime")

    def __init__(self, name: str, shares: float) -> None:
        if shares <= 0:
            raise ValueError(f"shares of task class {name!r} must be positive, got {shares!r}")
        self.name = name
        self.shares = shares
        self.queue: deque[Activation] = deque()
        self.vruntime = 0.0
        self.busy_time = 0.0  # seconds spent running this class: statistics()
        # True once the scheduler saw this class with nothing to do; cleared
        # when it next gets a tick. Read only when both classes have work.
        self.idle = False


class Scheduler:
    """Runs activations in slices of bounded ticks on one event loop."""

    def __init__(
        self,
        loop,
        monotonic: Callable[[], float],
        *,
        budget: float = 0.001,
        shares: dict[str, float] | None = None,
        stall_threshold: float = 0.025,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
        on_error: Callable[[Activation, BaseException], None],
        on_slice_start: Callable[[float], None] | None = None,
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        if budget <= 0:
            raise ValueError(f"budget must be positive seconds, got {budget!r}")
        merged = dict(DEFAULT_SHARES)
        for key, value in (shares or {}).items():
            if key not in merged:
                raise ValueError(f"unknown task class {key!r}; classes are {TASK_CLASSES}")
            merged[key] = value
        self._loop = loop
        self._monotonic = monotonic
        self.budget = budget
        self.stall_threshold = stall_threshold
        self._logger = logger or logging.getLogger("kernel")
        self._on_error = on_error
        self._on_slice_start = on_slice_start
        self._on_drained = on_drained
        self._latency = _TaskClass(LATENCY, merged[LATENCY])
        self._throughput = _TaskClass(THROUGHPUT, merged[THROUGHPUT])
        self._classes = {LATENCY: self._latency, THROUGHPUT: self._throughput}
        # True from the moment a slice is scheduled until it ends, so work
        # readied during a slice never schedules a second one.
        self._slice_pending = False
        self._stopped = False
        self._stall_reports: dict[str, tuple[float, int]] = {}
        self.slices = 0
        self.ticks = 0
        self.activations = 0

    # -- the small vocabulary the rest of the kernel uses ------------------

    def ready(self, activation: Activation, task_class: str = THROUGHPUT) -> None:
        """Queue `activation` to run in a later tick of `task_class`."""
        self._classes[task_class].queue.append(activation)
        if not self._slice_pending:
            self._schedule_slice()

    def ready_function(self, task_class: str = THROUGHPUT) -> Callable[[Activation], None]:
        """`ready` specialised for one class: what the runtime binds on its hot
        path (one call and an append per hop; benches/latency.py section 3)."""
        append = self._classes[task_class].queue.append

        def ready(activation: Activation) -> None:
            append(activation)
            if not self._slice_pending:
                self._schedule_slice()

        return ready

    def stop(self) -> None:
        """Run nothing more: used when the kernel fails or is cancelled."""
        self._stopped = True
        for cls in self._classes.values():
            cls.queue.clear()

    def has_work(self) -> bool:
        return bool(self._latency.queue or self._throughput.queue)

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            slices=self.slices,
            ticks=self.ticks,
            activations=self.activations,
            busy_time={c.name: c.busy_time for c in self._classes.values()},
            queued={c.name: len(c.queue) for c in self._classes.values()},
        )

    # -- internals ----------------------------------------------------------

    def _schedule_slice(self) -> None:
        if not self._stopped:
            self._slice_pending = True
            self._loop.call_soon(self._run_slice)

    def _pick_class(self) -> _TaskClass | None:
        lat, thr = self._latency, self._throughput
        if not lat.queue:
            lat.idle = True
            return thr if thr.queue else None
        if not thr.queue:
            thr.idle = True
            return lat
        # Both have work. A class that was idle starts from the other's
        # virtual runtime: sleeping banks no credit.
        if lat.idle and lat.vruntime < thr.vruntime:
            lat.vruntime = thr.vruntime
        elif thr.idle and thr.vruntime < lat.vruntime:
            thr.vruntime = lat.vruntime
        return thr if thr.vruntime < lat.vruntime else lat

    def _run_slice(self) -> None:
        if self._stopped:
            self._slice_pending = False
            return
        now = self._monotonic
        started = now()
        deadline = started + self.budget
        if self._on_slice_start is not None:
            self._on_slice_start(deadline)
        self.slices += 1
        latency = self._latency
        latency_queue = latency.queue
        throughput = self._throughput
        stall = self.stall_threshold
        t = started
        activation = None
        ticks = ran = 0
        try:
            while (cls := self._pick_class()) is not None:
                cls.idle = False
                queue = cls.queue
                popleft = queue.popleft
                other_queue = throughput.queue if cls is latency else latency_queue
                preemptible = cls is throughput
                run_start = t
                # Ticks of one class back to back while the other has no work,
                # so a quiet pipeline pays no class choice per hop. A tick is
                # the activations ready when it began; `queue` only empties
                # early if stop() cleared it.
                while queue:
                    ticks += 1
                    remaining = len(queue)
                    while remaining and queue:
                        remaining -= 1
                        activation = popleft()
                        activation.activate()
                        ran += 1
                        before, t = t, now()
                        if t - before > stall:
                            self._report_stall(activation, t - before)
                        if t >= deadline or (preemptible and latency_queue):
                            break
                    if t >= deadline or other_queue:
                        break
                spent = t - run_start
                cls.busy_time += spent
                cls.vruntime += spent / cls.shares
                cls.idle = not queue
                if t >= deadline or self._stopped:
                    break
        except BaseException as exc:  # the kernel decides what a failure means
            self._slice_pending = False
            self.ticks += ticks
            self.activations += ran
            self._on_error(activation, exc)
            return
        self.ticks += ticks
        self.activations += ran
        if self._stopped:
            self._slice_pending = False
        elif self.has_work():
            self._loop.call_soon(self._run_slice)
        else:
            self._slice_pending = False
            if self._on_drained is not None:
                self._on_drained()

    def _report_stall(self, activation: Activation, seconds: float) -> None:
        # One line per activation per STALL_REPORT_INTERVAL: a slow user
        # function stalls every batch, and the log must stay readable.
        name = getattr(activation, "name", repr(activation))
        now = self._monotonic()
        last, suppressed = self._stall_reports.get(name, (None, 0))
        if last is not None and now - last < STALL_REPORT_INTERVAL:
            self._stall_reports[name] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more stalls since the last report)" if suppressed else ""
        self._stall_reports[name] = (now, 0)
        self._logger.warning(
            "stall: %s ran %.1f ms without yielding (threshold %.1f ms); "
            "the event loop and every other operator waited%s",
            name,
            seconds * 1e3,
            self.stall_threshold * 1e3,
            more,
        )
