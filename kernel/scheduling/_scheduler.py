"""The run queue: ready activations executed in bounded ticks.

Vocabulary
----------
activation
    Anything with an ``activate()`` method and a ``name``: an operator that has
    input waiting, a source that can produce, a waker for a low-level task.
    ``activate()`` may return ``LATER`` to decline what is left of a slice:
    it keeps its place at the head of its queue and the slice ends.
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

Host turns
----------
A slice ends by handing the loop back, but what the host's callbacks
schedule during that turn runs only in the next one, after the kernel's
next slice: a request to a web server on the same loop goes through a few
turns (its data read, its handler's task, the reply), and would wait a
slice at each. So when the host did work between two slices (the gap
between them is more than an idle loop turn takes: twice the shortest gap
seen, plus a little), the kernel sits the next turn out, up to
``HOST_TURNS`` in a row, and what the host scheduled runs first. A turn sat
out costs a few microseconds, and the kernel still runs at least one slice
in every ``HOST_TURNS + 1`` turns. Only between slices that follow each
other (work was left when the last one ended): a kernel that had nothing
to do starts its next slice at once. On a clock that does not move (a
`VirtualClock`) the gap is always zero: no turn is sat out.

Other threads
-------------
Before a slice, once a switch interval, the kernel lets the GIL go for a
moment when the process has another thread (`_handover.py`): the loop's
polls between slices release it too briefly for a waiting thread to take.
Not when the kernel was idle for a switch interval until this slice.

The stall detector logs any single activation that runs longer than
``stall_threshold`` (25 ms, as Seastar's blocked-reactor notice), naming it.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ._clock import VirtualClock
from ._continues import continued_within
from ._handover import Handover

LATENCY = "latency"
THROUGHPUT = "throughput"
TASK_CLASSES = (LATENCY, THROUGHPUT)
DEFAULT_SHARES = {LATENCY: 2, THROUGHPUT: 1}
STALL_REPORT_INTERVAL = 10.0  # seconds between two stall reports of one activation
HOST_TURNS = 3  # loop turns in a row the kernel sits out while the host works
_HOST_WORK = 2e-6  # seconds: a gap this much over twice an idle turn's is the host's work


class _Later:
    __slots__ = ()

    def __repr__(self) -> str:
        return "LATER"


#: What `activate()` returns to say "not in what is left of this slice" (a
#: source whose next poll does not fit): the activation keeps its place at
#: the head of its queue, so it runs first in the next slice, and this
#: slice ends, the rest of its budget left to the host.
LATER = _Later()


@dataclass(frozen=True)
class SchedulerStatistics:
    """What a scheduler has done so far (as trio's `RunStatistics`)."""

    slices: int  # event-loop callbacks: each ran ticks until the budget was spent
    ticks: int  # passes over what was ready when they began
    activations: int
    host_turns: int  # loop turns sat out while the host worked (see "Host turns")
    busy_time: dict[str, float]  # seconds spent running each task class
    queued: dict[str, int]  # activations waiting, per task class
    stalls: int = 0  # activations that ran past the stall threshold (reported or not)
    idle_time: float = 0.0  # seconds with nothing ready to run, since the first slice


class Activation(Protocol):
    name: str

    def activate(self) -> object: ...  # None, or LATER


def described(activation) -> str:
    """An activation as the stall notice names it: its name, and the steps
    chained after it, which run inside it (`chained_names()`, a step's
    activation's): a `map` blocked 1 s after `from_iterable` was reported
    as `from_iterable (step 0) ran 1000.2 ms`, the map unnamed (the
    watchdog's report names the step and function still running).
    Ends in a comma where steps are named (the sentence goes on after it)."""
    name = getattr(activation, "name", None) or repr(activation)
    chained = getattr(activation, "chained_names", None)
    after = chained() if chained is not None else ()
    if not after:
        return name
    steps = after[0] if len(after) == 1 else f"{', '.join(after[:-1])} and {after[-1]}"
    return f"{name}, with {steps} chained in its activation,"


#: The longest budget a kernel takes. The budget is how long the kernel holds
#: the event loop: budget=10**9 (or 1e300) was taken, and the host's tasks
#: under run_async, a Ctrl-C, timers and async sources then waited for the
#: whole run, and the watchdog (which looks once a second) blamed whatever
#: step ran when 10 s had passed. Past a second nothing is gained: a slice
#: of 1 ms already holds thousands of hops. (A VirtualClock's budget is in
#: its own time, which holds no loop: a test's "budget no chain reaches".)
MAX_BUDGET = 1.0


_ITS_KERNELS_CLOCK = object()  # the Scheduler's: its Kernel checked the budget with its clock


def _virtual(clock) -> bool:
    return clock is _ITS_KERNELS_CLOCK or isinstance(clock, VirtualClock)


def _positive_seconds(name: str, value) -> None:  # inf allowed: never (no stall notices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= math.inf:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")


def check_settings(budget, shares, stall_threshold, clock=None) -> None:
    """Refuses scheduler settings it cannot use, before anything runs.

    Checked here rather than met later: a NaN budget compared false
    everywhere, so the kernel never handed the loop back; a string failed as
    a bare TypeError inside the first activation; `shares=5` as an
    AttributeError. `run()` calls this when it plans the run, so that with
    several cores the caller gets the ValueError, not a kernel process's."""
    _positive_seconds("budget", budget)
    if budget == math.inf or (budget > MAX_BUDGET and not _virtual(clock)):
        raise ValueError(f"budget must be a positive number of seconds, at most {MAX_BUDGET:g} "
                         f"(the longest the kernel holds the event loop), got {budget!r}")
    _positive_seconds("stall_threshold", stall_threshold)
    if shares is None:
        return
    if not isinstance(shares, dict):
        raise ValueError(f"shares must be a dict of task class -> shares, got {shares!r}")
    for key, value in shares.items():
        if key not in TASK_CLASSES:
            raise ValueError(f"unknown task class {key!r}; classes are {TASK_CLASSES}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"shares of task class {key!r} must be a positive number, got {value!r}")


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
        check_settings(budget, shares, stall_threshold, _ITS_KERNELS_CLOCK)
        merged = dict(DEFAULT_SHARES)
        merged.update(shares or {})
        self._loop = loop
        self._monotonic = monotonic
        self.budget = budget
        self.stall_threshold = stall_threshold
        # An activation within the budget is what the kernel was given: a
        # budget over the threshold (budget=0.2: sources size their batches
        # to fill it) had every source's batch reported as a stall.
        self._stall_after = max(stall_threshold, budget)
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
        self._pending_since = 0.0  # when the pending slice was asked for (idle_time)
        # host turns: whether the last slice left work (the next follows
        # it), when it ended, the shortest gap between two such slices (an
        # idle loop turn), and the turns sat out in a row
        self._continued = False
        self._slice_ended = 0.0
        self._idle_turn = float("inf")
        self._sat_out = 0
        self._stopped = False
        self._stall_reports: dict[str, tuple[float, int]] = {}
        self.slices = 0
        self.ticks = 0
        self.activations = 0
        self.host_turns = 0  # turns sat out for the host
        self.stalls = 0  # every stall, also those the log folds into a later report
        self._idle_time = 0.0  # gaps after a slice that drained every queue (see statistics)
        self.handover = Handover()  # the GIL for the process's other threads (_handover.py)

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
            host_turns=self.host_turns,
            busy_time={c.name: c.busy_time for c in self._classes.values()},
            queued={c.name: len(c.queue) for c in self._classes.values()},
            stalls=self.stalls,
            idle_time=self.idle_time(),
        )

    def idle_time(self) -> float:
        """Seconds in which nothing was ready to run: from each slice that
        drained every queue to the next slice (or to now, while idle)."""
        if not self.slices:
            return self._idle_time
        if self._slice_pending:
            # Work came and its slice is due: idle from the last slice's end
            # to then (the slice adds it, and more, when it runs). Left out
            # here, the counter went back between the two (10 s -> 0 -> 10 s:
            # a reset to Prometheus).
            if self._continued:
                return self._idle_time
            return self._idle_time + max(0.0, self._pending_since - self._slice_ended)
        return self._idle_time + max(0.0, self._monotonic() - self._slice_ended)

    # -- internals ----------------------------------------------------------

    def _schedule_slice(self) -> None:
        if not self._stopped:
            self._slice_pending = True
            self._pending_since = self._monotonic()
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
        if self._continued and self._host_worked(started):
            self._slice_ended = started
            self._loop.call_soon(self._run_slice)  # the host's turn: the next one is ours
            return
        handover = self.handover
        idle = not self._continued  # the last slice left nothing ready (or none ran): idle since
        if idle and self.slices:
            gap = started - self._slice_ended
            self._idle_time += max(0.0, gap)
            idle = gap >= handover.interval  # threads had the GIL meanwhile (_handover.py)
        # After the host's turn and the idle time are told: a pause is
        # neither (each one counted as the host's work, and the next turn
        # was sat out), nor part of the budget
        if (real := time.monotonic()) >= handover.due and handover.hand_over(real, idle):
            started = now()
        deadline = started + self.budget
        if self._on_slice_start is not None:
            self._on_slice_start(deadline)
        self.slices += 1
        latency = self._latency
        latency_queue = latency.queue
        throughput = self._throughput
        stall = self._stall_after
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
                        if activation.activate() is LATER:  # keeps its place; the slice ends
                            queue.appendleft(activation)
                            deadline = t
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
        self._slice_ended = t
        self._continued = False
        if self._stopped:
            self._slice_pending = False
        elif self.has_work():
            self._continued = True
            self._loop.call_soon(self._run_slice)
        else:
            self._slice_pending = False
            if self._on_drained is not None:
                self._on_drained()

    def _host_worked(self, started: float) -> bool:
        """Did the host work since the last slice, so that this turn is
        better left to what it scheduled (see "Host turns")?"""
        gap = started - self._slice_ended
        idle = self._idle_turn
        if gap < idle:
            self._idle_turn = gap
        elif idle < float("inf"):
            self._idle_turn = idle + (gap - idle) * 0.001  # a machine that got slower
        if gap > 2 * idle + _HOST_WORK and self._sat_out < HOST_TURNS:
            self._sat_out += 1
            self.host_turns += 1
            return True
        self._sat_out = 0
        return False

    def _report_stall(self, activation: Activation, seconds: float) -> None:
        # One line per activation per STALL_REPORT_INTERVAL: a slow user
        # function stalls every batch, and the log must stay readable.
        if continued_within(seconds):  # the process was stopped meanwhile, not the activation slow
            return
        self.stalls += 1
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
            described(activation),
            seconds * 1e3,
            self._stall_after * 1e3,
            more,
            extra={"step": name},
        )
