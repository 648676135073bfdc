"""One kernel: a cooperative scheduler for one core.

Design principles (the kernel is a microkernel):

* A kernel owns an event loop's worth of cooperative work on one core: a
  scheduler of ready activations (`_scheduler.py`), the low-level tasks spawned
  on it, a clock, and the context its tasks share (index, peers, watermark,
  epoch, logger). It knows nothing of what any operator computes.
* Operators and tasks talk to the kernel through a small vocabulary:
  `ready()` an activation, `spawn()` a task, `cooperate()`, `fail()`, and the
  context. Nothing reaches into the kernel's fields.
* `await` belongs where the outside world is. Batches move synchronously inside
  ticks; the only awaits are in low-level tasks (sources doing I/O, transports
  parking) and in `join()`.
* A kernel runs on the loop it is given; it never looks for a global loop. The
  current kernel is a context variable, set for the duration of `join()` and
  reset in `finally`, so `cooperate()` finds it from any task it spawned.
* Time comes from the injectable clock, never from `time` directly.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import logging
import math
from collections.abc import Coroutine
from dataclasses import dataclass

from kernel.scheduling._clock import Clock, SystemClock, check_clock
from kernel.scheduling._errors import ActivationError, TaskError
from kernel.scheduling._scheduler import (
    THROUGHPUT,
    Activation,
    Scheduler,
    SchedulerStatistics,
    check_settings,
)
from kernel.scheduling._watchdog import Watchdog

_RUN_SLICE = Scheduler._run_slice.__code__  # a slice's frame: its `activation` is the one running

_current_kernel: contextvars.ContextVar[Kernel | None] = contextvars.ContextVar(
    "current_kernel", default=None
)
# The current kernel's C-level `cooperate`, kept beside the kernel so the
# module-level cooperate() is one lookup and one C call; outside any kernel,
# every ticket is a plain yield.
_current_tickets: contextvars.ContextVar = contextvars.ContextVar("current_cooperate")

# cooperate() reads the clock only every this many calls: a clock read costs
# about as much as the rest of the fast path, and the budget (1 ms) is
# hundreds of cooperate() calls long anyway (benches/latency.py measures it).
_POLLS_PER_CLOCK_READ = 16


class _Yield:
    """A reusable awaitable that yields once to the event loop."""

    __slots__ = ()

    def __await__(self):
        yield


_YIELD = _Yield()
_OUTSIDE_ANY_KERNEL = itertools.repeat(_YIELD).__next__
# An exhausted iterator is a reusable awaitable that completes at once.
_NO_WAIT = iter(())


class _BudgetCheck:
    """The awaitable every _POLLS_PER_CLOCK_READ-th `cooperate()` returns: it
    reads the clock and yields if the kernel's budget is spent."""

    __slots__ = ("_kernel",)

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel

    def __await__(self):
        return self._kernel._check_budget()


@dataclass(frozen=True)
class KernelStatistics:
    """A kernel's `statistics()`: its scheduler's (None before it runs) and
    how many low-level tasks are alive."""

    scheduler: SchedulerStatistics | None
    tasks: int

    @property
    def slices(self) -> int:
        return self.scheduler.slices if self.scheduler else 0

    @property
    def ticks(self) -> int:
        return self.scheduler.ticks if self.scheduler else 0

    @property
    def activations(self) -> int:
        return self.scheduler.activations if self.scheduler else 0

    @property
    def host_turns(self) -> int:
        return self.scheduler.host_turns if self.scheduler else 0

    @property
    def busy_time(self) -> dict[str, float]:
        return self.scheduler.busy_time if self.scheduler else {}


class _KernelLogger(logging.LoggerAdapter):
    """Tags every record with the kernel index (`record.kernel`) and a
    prefix, and with whatever else its `extra` holds (the runtime adds the
    `job`)."""

    def process(self, msg, kwargs):
        extra = kwargs.setdefault("extra", {})
        for key, value in self.extra.items():
            extra.setdefault(key, value)
        return f"[kernel {self.extra['kernel']}] {msg}", kwargs


class KernelContext:
    """What the tasks of one kernel share.

    `watermark` is the kernel's event-time watermark (the minimum over its
    sources' watermarks; -inf until a source says otherwise, +inf once every
    source has ended). `epoch` is the current epoch number (0 until epochs
    exist); `snapshots` says whether the run takes epoch snapshots (a
    state_dir: then operators get `on_epoch` and `on_commit`); `processes`
    how many processes of a cluster the run's kernels are in (1 on one
    machine, where kernel processes are forked from one). `listings` is
    the board on which a run's kernel processes share one listing of
    their input (`from_files`; None on a kernel of its own). `clock` is
    the kernel's clock. `logger` tags records with the kernel index.
    """

    __slots__ = ("clock", "epoch", "index", "kernel", "key_groups", "listings", "logger", "peers",
                 "processes", "snapshots", "watermark")

    def __init__(self, kernel: Kernel, index: int, peers: int, clock, logger) -> None:
        self.kernel = kernel
        self.index = index
        self.peers = peers
        # how many key groups the run has (set by the runtime: it partitions
        # keys and the bounded sources' input by them; kernel.dataflow._key_groups)
        self.key_groups = 1
        self.watermark = float("-inf")
        self.epoch = 0
        self.snapshots = False  # set by the runtime before operators open
        # the processes that each build the flow themselves: more than one in
        # a cluster (set by the launcher of its kernels; kernel.execution)
        self.processes = 1
        # the run's one listing of each bounded source's files, shared by its
        # kernel processes (kernel.execution._listings); None: one kernel
        self.listings = None
        self.clock = clock
        self.logger = logger

    def __repr__(self) -> str:
        return f"KernelContext(index={self.index}, peers={self.peers}, watermark={self.watermark})"


class _TaskRef:
    __slots__ = ("name", "task")

    def __init__(self, task: asyncio.Task, name: str) -> None:
        self.task = task
        self.name = name


def _check_place(index, peers, logger) -> None:
    """The low-level API's `index`, `peers` and `logger`, checked when the
    kernel is made: `Kernel(index=3, peers=2)` was taken (a source split
    its input by them), and `logger=5` failed at the first log line."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not whole(peers) or peers < 1:
        raise ValueError("Kernel: peers must be a positive int (how many kernels run the flow), "
                         f"got {peers!r}")
    if not whole(index) or not 0 <= index < peers:
        raise ValueError(f"Kernel: index must be an int from 0 to {peers - 1} (peers={peers}), got {index!r}")
    # what the kernel's LoggerAdapter asks of it: another logger that has them (structlog's
    # stdlib one, a wrapper) was taken before this check, and logs as well
    if logger is not None and not (callable(getattr(logger, "log", None))
                                   and callable(getattr(logger, "isEnabledFor", None))):
        raise ValueError(f"Kernel: logger must be a logging.Logger or None, got {logger!r}")


class Kernel:
    """A cooperative kernel for one core, on the event loop it is started on.

    Low-level use::

        kernel = Kernel()
        kernel.spawn(worker())        # a coroutine that may `await cooperate()`
        await kernel.join()           # returns when every task and activation is done

    `budget` is the longest stretch, in seconds, that the kernel's work runs
    before handing the loop back. `shares` maps the task classes
    ("latency", "throughput") to their shares.
    """

    def __init__(
        self,
        *,
        index: int = 0,
        peers: int = 1,
        clock=None,
        budget: float = 0.001,
        shares: dict[str, float] | None = None,
        stall_threshold: float = 0.025,
        logger: logging.Logger | None = None,
    ) -> None:
        check_clock(clock)
        # at the call, as run() does: else Kernel(budget=10**9) or budget='x' was
        # refused only when the kernel started on a loop, or not at all
        check_settings(budget, shares, stall_threshold, clock)
        _check_place(index, peers, logger)
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._monotonic = self.clock.monotonic
        base_logger = logger or logging.getLogger("kernel")
        self.logger = _KernelLogger(base_logger, {"kernel": index})
        self.context = KernelContext(self, index, peers, self.clock, self.logger)
        self._budget = budget
        self._shares = shares
        self._stall_threshold = stall_threshold
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: Scheduler | None = None
        self._tasks: set[_TaskRef] = set()
        self._pending_spawns: list[tuple[Coroutine, str]] = []
        self._starters: list = []
        self._busy = 0  # things other than tasks that keep the kernel alive
        self._timers: set = set()  # processing-time timers (call_later)
        self._failure: BaseException | None = None
        self._idle: asyncio.Future | None = None
        self._deadline = 0.0
        self._spent = False
        # cooperate() is a C-level call: the next "ticket" from an endless
        # chain over a live list. While the budget lasts the list is one
        # run of done futures (awaiting one costs a few tens of ns) ending in a
        # budget check; once the budget is spent the list becomes [_YIELD], so
        # every task yields at its next call until `_refill`. The list is
        # changed in place, so a `cooperate` a task captured sees the change.
        # (A Python-level cooperate() costs about twice as much:
        # benches/latency.py.)
        self._budget_check = _BudgetCheck(self)
        self._tickets: list = [self._budget_check]  # always a check until the kernel runs
        self._normal_tickets: list = []
        self._next_ticket = itertools.chain.from_iterable(itertools.repeat(self._tickets)).__next__
        self.cooperate = self._next_ticket

    # -- lifecycle ----------------------------------------------------------

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            if self._loop is not loop:
                raise RuntimeError("a kernel runs on one event loop only")
            return
        self._loop = loop
        self._scheduler = Scheduler(
            loop,
            self._monotonic,
            budget=self._budget,
            shares=self._shares,
            stall_threshold=self._stall_threshold,
            logger=self.logger,
            on_error=self._activation_failed,
            on_slice_start=self._set_deadline,
            on_drained=self._check_idle,
        )
        done = loop.create_future()
        done.set_result(None)
        self._normal_tickets = [done] * (_POLLS_PER_CLOCK_READ - 1) + [self._budget_check]
        self._tickets[:] = self._normal_tickets
        self._deadline = self._monotonic() + self._budget
        self._idle = loop.create_future()
        for coro, name in self._pending_spawns:
            self._start_task(coro, name)
        self._pending_spawns.clear()

    def at_start(self, fn) -> None:
        """Call `fn()` when the kernel starts running (inside `join()`), before
        it waits; an exception there fails the run."""
        self._starters.append(fn)

    async def join(self) -> None:
        """Run until every activation and task of this kernel is done.

        Raises the first failure (an operator's or a task's exception); the
        kernel then stops its scheduler and cancels its remaining tasks, so
        nothing keeps running after a failure.
        """
        loop = asyncio.get_running_loop()
        token = _current_kernel.set(self)
        tickets_token = _current_tickets.set(self._next_ticket)
        # (no stall notices, no hang reports either; a threshold above the watchdog's is its first)
        watchdog = None
        if self._stall_threshold != math.inf:
            watchdog = Watchdog(loop, self._blocked_in, self._report_blocked, self._stall_threshold,
                                self._busy_since)
        try:
            self._attach(loop)
            if self._idle.done() and self._failure is None:
                # joined before: this join waits for what was spawned since (it
                # returned at once, on the first join's done future, a task pending)
                self._idle = loop.create_future()
            if watchdog is not None:
                watchdog.start()
            starters, self._starters = self._starters, []
            for fn in starters:
                try:
                    fn()
                except BaseException as exc:  # becomes the run's failure, as raised
                    # (any: a `class Stop(BaseException)` or a KeyboardInterrupt
                    # went straight out of join(), the kernel's tasks left running)
                    self.fail(exc)
                    break
            self._check_idle()
            try:
                await self._idle
            except asyncio.CancelledError:
                self._shutdown()
                raise
            if self._failure is not None:
                raise self._failure
        finally:
            if watchdog is not None:
                watchdog.stop()
            self._cancel_timers()
            _current_tickets.reset(tickets_token)
            _current_kernel.reset(token)

    def _blocked_in(self, frames: list) -> str | tuple[str, str] | None:
        """What of this kernel's work the loop's thread is in (`frames`,
        innermost first; read by the watchdog's thread): an activation of a
        slice of its scheduler, one of its processing-time timers
        (`call_later`), its start (`join` running what `at_start` was
        given: the steps' open and restore) or one of its tasks; None if
        none (the host's, or another kernel's on the same loop). For an
        activation or the start, `(what, step)`: what is blocked in it, the
        step and function where the activation says (`blocked_step(frames)`,
        a step's: a map chained after its source runs in the source's
        activation), and the report's `step`, that step's name (the
        activation's, or the start, where none is found). The step blocked
        was the message's alone, the record's `step` the activation's: a
        filter on a map's name never saw its map blocked."""
        for at, frame in enumerate(frames):
            # (another kernel's slice on this loop, run_async twice beside, is that kernel's to report)
            if frame.f_code is _RUN_SLICE and frame.f_locals.get("self") is self._scheduler:
                activation = frame.f_locals.get("activation")
                name = getattr(activation, "name", None) or repr(activation)
                inner = getattr(activation, "blocked_step", None)
                return (inner(frames[:at]) if inner is not None else None) or (name, name)
            # a processing-time timer's function blocked: reported by nothing, and
            # a Ctrl-C only cancelled the run once it returned
            if frame.f_code is _RUN_TIMER and frame.f_locals.get("self") is self:
                fn = frame.f_locals.get("fn")
                return f"timer call_later({getattr(fn, '__qualname__', None) or repr(fn)})"
            # join() running its starters: the steps' open() and restore() (one blocked
            # on a connection that never comes was not reported either)
            if frame.f_code is _JOIN and frame.f_locals.get("self") is self:
                start = "the kernel's start (its steps' open and restore)"
                # the starter running (`fn`: a runtime's start) may say which step's open it is in
                inner = getattr(getattr(frame.f_locals.get("fn"), "__self__", None), "blocked_step", None)
                return (inner(frames[:at], start) if inner is not None else None) or (start, start)
        loop = self._loop
        current = asyncio.current_task(loop) if loop is not None else None
        for ref in list(self._tasks):  # a copy: the loop's thread may change the set
            if ref.task is current:
                return f"task {ref.name!r}"
        return None

    def _busy_since(self, frames: list) -> float | None:
        """When (time.monotonic()) the slice of this kernel's scheduler the
        loop's thread is in (`frames`, innermost first; read by the
        watchdog's thread) began: the loop has not run anything else since.
        None where it is in no slice of this kernel's."""
        for frame in frames:
            if frame.f_code is _RUN_SLICE and frame.f_locals.get("self") is self._scheduler:
                # (its real time, not the kernel clock's: that may be virtual)
                return frame.f_locals.get("real")
        return None

    def _report_blocked(self, message: str, what: str) -> None:
        self.logger.warning("%s", message, extra={"step": what})

    def fail(self, exc: BaseException) -> None:
        """End the run with `exc` (the first failure wins)."""
        if self._failure is not None:
            return
        self._failure = exc
        self._shutdown()
        # Timers due before the wait below wakes (the loop's next turn) ran
        # after the failure: the epoch timer snapshotted an epoch behind a
        # batch a step had failed in (a resumed run lost it).
        self._cancel_timers()
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the kernel runs on (None until it runs)."""
        return self._loop

    @property
    def failed(self) -> bool:
        return self._failure is not None

    def _shutdown(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()
        for ref in list(self._tasks):
            ref.task.cancel()

    # -- the vocabulary for operators and tasks ----------------------------

    def call_later(self, delay: float, fn):
        """Call `fn()` on this kernel's loop after `delay` seconds of its
        clock: real seconds with the system clock, `advance()`d ones with a
        `VirtualClock` (due timers then run on the loop's next turn, in
        deadline order). Returns a handle with `cancel()`. This is the
        kernel's processing-time timer; timers still pending when the kernel
        finishes are cancelled (they never keep a run alive), and when it
        fails, at once (none fires after a failure). A `fn` that
        raises fails the run: with a `TaskError` naming `call_later(fn)`
        (the exception its cause), whatever it raised but an error already
        named and a KeyboardInterrupt, which fail it as themselves."""
        if self._loop is None:
            raise RuntimeError("call_later() needs a running kernel")
        if delay != delay:  # (NaN: with a VirtualClock it held every later timer back)
            raise ValueError("call_later: the delay must be a number of seconds, got nan")
        loop, timers = self._loop, self._timers
        handle = None

        def fire():
            timers.discard(handle)
            self._run_timer(fn)

        handle = self.clock.timer(loop, delay, fire)
        timers.add(handle)
        return handle

    def _run_timer(self, fn) -> None:
        # (a method of its own: its frame tells the watchdog and a Ctrl-C that
        # the loop is in this kernel's timer, `_blocked_in`)
        try:
            fn()
        except BaseException as exc:  # a timer's failure is the run's, not the loop's
            self._timer_failed(fn, exc)

    def _timer_failed(self, fn, exc: BaseException) -> None:
        # Named as a task's failure is: raised as it was, a timer's error
        # named nothing, and its SystemExit(0) ended a one-kernel run (and
        # the process, exit status 0) as if it had completed, its
        # `class Stop(BaseException)` went past an `except Exception`.
        if not isinstance(exc, KeyboardInterrupt) and not getattr(exc, "_kernel_named", False):
            label = getattr(fn, "__qualname__", None) or repr(fn)
            wrapped = TaskError(f"call_later({label})", exc)
            wrapped.__cause__ = exc
            exc = wrapped
        self.fail(exc)

    def _cancel_timers(self) -> None:
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()

    def ready(self, activation: Activation, task_class: str = THROUGHPUT) -> None:
        """Queue an activation for a later tick."""
        self._scheduler.ready(activation, task_class)

    def ready_function(self, task_class: str = THROUGHPUT):
        """`ready` for one task class, as a plain function: for hot paths that
        ready activations of one class over and over."""
        return self._scheduler.ready_function(task_class)

    def hold(self) -> None:
        """Keep the kernel alive until a matching `release()` (a dataflow
        holds the kernel until all its operators have ended)."""
        self._busy += 1

    def release(self) -> None:
        self._busy -= 1
        self._check_idle()

    def spawn(self, coro: Coroutine, *, name: str | None = None) -> asyncio.Task | None:
        """Run a low-level task on this kernel.

        The kernel's run lasts until the task returns; an exception in the task
        fails the run. A task started before the kernel runs is started when it
        does (and then `None` is returned instead of the task).
        """
        if not asyncio.iscoroutine(coro):
            # refused here: at join() it failed as a bare "a coroutine was expected", the
            # tasks spawned after it never started (their coroutines never awaited)
            hint = " (call it: spawn(fn()), not spawn(fn))" if inspect.iscoroutinefunction(coro) else ""
            raise TypeError(f"spawn needs a coroutine{hint}, got {coro!r}")
        label = name or getattr(coro, "__qualname__", repr(coro))
        if self._failure is not None:
            # a failure stops everything of the kernel: a task spawned after it ran all the same
            if asyncio.iscoroutine(coro):
                coro.close()
            raise RuntimeError(f"spawn({label}): this Kernel's run failed "
                               f"({type(self._failure).__name__}); make a new Kernel for this one")
        if self._loop is None:
            self._pending_spawns.append((coro, label))
            return None
        if self._loop.is_closed():
            # A kernel reused after asyncio.run() closed its loop: else the
            # loop's bare "Event loop is closed" and a never-awaited warning.
            if asyncio.iscoroutine(coro):
                coro.close()
            raise RuntimeError(f"spawn({label}): this Kernel ran on an event loop that is closed now; "
                               "a kernel runs on one event loop only: make a new Kernel for this one")
        return self._start_task(coro, label)

    def _start_task(self, coro: Coroutine, name: str) -> asyncio.Task:
        token = _current_kernel.set(self)
        tickets_token = _current_tickets.set(self._next_ticket)
        try:
            # the task copies the current context, so cooperate() inside it
            # finds this kernel.
            task = self._loop.create_task(coro, name=name)
        finally:
            _current_tickets.reset(tickets_token)
            _current_kernel.reset(token)
        ref = _TaskRef(task, name)
        self._tasks.add(ref)
        task.add_done_callback(lambda t, ref=ref: self._task_done(ref))
        return task

    def _task_done(self, ref: _TaskRef) -> None:
        self._tasks.discard(ref)
        task = ref.task
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, TaskError) and not getattr(exc, "_kernel_named", False):
                wrapped = TaskError(ref.name, exc)
                wrapped.__cause__ = exc
                exc = wrapped
            self.fail(exc)
        self._check_idle()

    def _check_idle(self) -> None:
        if self._idle is None or self._idle.done():
            return
        if self._busy == 0 and not self._tasks and not self._scheduler.has_work():
            self._idle.set_result(None)

    def _activation_failed(self, activation: Activation, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            pass  # Ctrl-C, wherever it landed: the run ends as it means
        elif not getattr(exc, "_kernel_named", False):
            # SystemExit too: sys.exit(0) in an activation ended the run as
            # if it had completed
            name = getattr(activation, "name", repr(activation))
            wrapped = ActivationError(name, exc)
            wrapped.__cause__ = exc
            exc = wrapped
        self.fail(exc)

    def _set_deadline(self, deadline: float) -> None:
        self._deadline = deadline

    @property
    def budget(self) -> float:
        """Seconds of work the kernel runs before handing the loop back."""
        return self._budget

    @property
    def deadline(self) -> float:
        """When (on the clock's `monotonic()`) the current stretch of work
        has used up its budget."""
        return self._deadline

    def budget_spent(self) -> bool:
        """True once the current stretch of work (a slice of activations, or
        tasks' turn between two loop turns) has used up its budget: work that
        can wait should then go to a later tick."""
        return self._monotonic() >= self._deadline

    # -- cooperation --------------------------------------------------------

    def cooperate(self):
        """Awaitable: nearly free while the kernel's budget lasts, a real
        yield to the event loop once it is spent.

        The budget is the kernel's, shared by all its tasks: once one task
        finds it spent, every task yields at its next `cooperate()` until the
        loop has had its turn (`_refill` runs after the tasks that yielded).
        A per-task budget would let N busy tasks hold the loop N budgets long.
        The clock is read every _POLLS_PER_CLOCK_READ-th call.

        (Each kernel replaces this method by a C-level callable in
        `__init__`; this body is its reference behaviour and its docs.)
        """
        return self._next_ticket()

    def _check_budget(self):
        # the iterator `await` runs: none that completes at once, or a
        # generator that yields once
        if self._spent or self._loop is None:
            return _YIELD.__await__()
        if self._monotonic() < self._deadline:
            return _NO_WAIT
        self._spent = True
        self._tickets[:] = (_YIELD,)
        self._loop.call_soon(self._refill)
        return _YIELD.__await__()

    def _refill(self) -> None:
        self._spent = False
        self._tickets[:] = self._normal_tickets
        self._deadline = self._monotonic() + self._budget

    def statistics(self) -> KernelStatistics:
        """What this kernel has done so far: its scheduler's figures and its
        live low-level tasks."""
        scheduler = self._scheduler.statistics() if self._scheduler else None
        return KernelStatistics(scheduler=scheduler, tasks=len(self._tasks))


_get_current_tickets = _current_tickets.get


def current_kernel() -> Kernel | None:
    """The kernel whose work is running now, or None outside any kernel."""
    return _current_kernel.get()


def cooperate():
    """`await cooperate()`: give the event loop a turn if this kernel's budget
    is spent; otherwise return at once.

    Outside a kernel it is a plain yield, so code that calls it works anywhere.
    """
    return _get_current_tickets(_OUTSIDE_ANY_KERNEL)()


_RUN_TIMER = Kernel._run_timer.__code__  # a timer's frame: its `fn` is the one running
_JOIN = Kernel.join.__code__  # its frame on the loop thread: the kernel starting (or ending)
