"""Event time in the kernel: source watermarks, event-time timers (exact
firing orders), processing-time timers on the virtual clock, idle sources."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os

import pytest

from kernel import (
    Dataflow,
    Kernel,
    KernelError,
    Operator,
    TaskError,
    TimedBatch,
    VirtualClock,
    run,
    run_async,
)
from operators import Tumbling


class Traced(Operator):
    """Sets a timer at `record + 1` for every record and traces everything."""

    trace: list = []

    def on_batch(self, port, batch):
        for record, stamp in zip(batch, batch.timestamps):
            self.trace.append(("batch", record, stamp))
            self.schedule(stamp + 1.0, record)

    def on_timer(self, event_time, data):
        self.trace.append(("timer", event_time, data))

    def on_watermark(self, watermark):
        self.trace.append(("wm", watermark))

    def on_end(self):
        self.trace.append(("end",))


def test_event_time_timers_fire_in_time_order_before_the_watermark_moves_on():
    Traced.trace = []
    flow = Dataflow()
    flow.from_iterable([1.0, 3.0, 2.0, 6.0], timestamp=lambda t: t, batch_size=1).apply(Traced)
    run(flow, clock=VirtualClock())
    assert Traced.trace == [
        ("batch", 1.0, 1.0),
        ("wm", 1.0),
        ("batch", 3.0, 3.0),
        ("timer", 2.0, 1.0),  # due at 2.0 <= 3.0
        ("wm", 3.0),
        ("batch", 2.0, 2.0),  # out of order: the watermark stays at 3.0
        ("batch", 6.0, 6.0),
        ("timer", 3.0, 2.0),  # set after the watermark passed it: fires at the next step
        ("timer", 4.0, 3.0),
        ("wm", 6.0),
        ("timer", 7.0, 6.0),  # the rest fire when the input ends
        ("wm", math.inf),
        ("end",),
    ]


class FollowUp(Operator):
    """Sets a timer in on_watermark, at the watermark plus one, and emits
    `(time, data)` for each timer that fires."""

    def on_batch(self, port, batch):
        pass

    def on_timer(self, event_time, data):
        self.emit([(event_time, data)])

    def on_watermark(self, watermark):
        self.schedule(watermark + 1.0, watermark)


@pytest.mark.parametrize("cores", [1, 2])
def test_timers_set_at_the_last_watermark_fire_when_the_input_ends(cores):
    # "all that are left fire when the input ends": also the one each kernel
    # sets in on_watermark(inf), after which no watermark comes to fire it
    flow = Dataflow()
    fired = flow.from_iterable([1.0, 3.0], timestamp=lambda t: t, batch_size=1).apply(FollowUp).collect()
    run(flow, cores=cores)
    assert sorted(fired.items) == [(2.0, 1.0), (4.0, 3.0)] + [(math.inf, math.inf)] * cores


class Heartbeat(Operator):
    """A periodic timer: from the first record's time on, every 10 s of event
    time, emits `(timer time, watermark there)` and sets the next, until
    the input has ended."""

    def open(self, context):
        self.started = False

    def on_batch(self, port, batch):
        if not self.started:
            self.started = True
            self.schedule(batch.timestamps[0] + 10.0)

    def on_timer(self, event_time, data):
        watermark = self.current_watermark()
        self.emit([(event_time, watermark)])
        if watermark < math.inf:
            self.schedule(event_time + 10.0)


class LastWord(Operator):
    """At the final watermark, sets a timer at the largest time it saw;
    the timer emits one record stamped with that time."""

    def open(self, context):
        self.latest = None

    def on_batch(self, port, batch):
        self.latest = max([self.latest or -math.inf, *batch.timestamps])

    def on_watermark(self, watermark):
        if watermark == math.inf and self.latest is not None:
            self.schedule(self.latest, "last")

    def on_timer(self, event_time, data):
        self.emit(TimedBatch([(data, event_time)], [event_time]))


@pytest.mark.parametrize("cores", [1, 2])
def test_records_of_timers_set_at_the_last_watermark_are_not_late_downstream(cores):
    # they fire before +inf goes on: a window after the operator counts them
    flow = Dataflow()
    last = flow.from_iterable([1.0, 3.0, 12.0], timestamp=lambda t: t, batch_size=1).apply(LastWord)
    counted = last.key_by(lambda r: r[0]).window(Tumbling(10.0)).count()
    out = counted.collect()
    run(flow, cores=cores)
    assert counted.late_count.value == 0
    total = sum(n for _, _, n in out.items)  # one from each kernel that saw records
    assert total == 1 if cores == 1 else 1 <= total <= cores


def heartbeats_fit(beats: list, times: list, batch_size: int) -> bool:
    """Whether `beats` are what Heartbeat may emit on one kernel over
    `times` read in order: one beat every 10 s from the first record's time
    on, each fired by the watermark of the first batch that reached it (the
    largest time of a batch holding its time, so at most `batch_size` - 1
    past it: the kernel may poll fewer records when its budget is short),
    and one more at +inf when the input ends."""
    beats_due = int((times[-1] - times[0]) // 10.0) + 1  # the last at +inf
    dues = [times[0] + 10.0 * k for k in range(1, beats_due + 1)]
    fired_by = [due <= watermark <= due + batch_size - 1 and watermark in times
                for (due, watermark) in beats[:-1]]
    return [when for when, _ in beats] == dues and all(fired_by) and beats[-1][1] == math.inf


@pytest.mark.parametrize("cores", [1, 2])
def test_a_periodic_timer_stops_once_the_input_watermark_is_infinite(cores):
    # at the end of input every timer fires, also those set meanwhile: a
    # periodic timer that sets the next would go on for ever, unless it can
    # read the watermark that fired it (Flink's currentWatermark())
    flow = Dataflow()
    times = [float(t) for t in range(100)]
    beats = flow.from_iterable(times, timestamp=lambda t: t, batch_size=7).apply(Heartbeat).collect()
    run(flow, cores=cores)
    if cores == 1:
        assert heartbeats_fit(beats.items, times, 7), beats.items
    else:  # each kernel's own beats, from its own share's first record
        assert all(watermark >= when for when, watermark in beats.items)
        assert [watermark for _, watermark in beats.items].count(math.inf) == cores


class Ties(Operator):
    fired: list = []

    def on_batch(self, port, batch):
        for record in batch:
            self.schedule(5.0, record)

    def on_timer(self, event_time, data):
        self.fired.append(data)


def test_timers_at_the_same_time_fire_in_the_order_they_were_set():
    Ties.fired = []
    flow = Dataflow()
    flow.from_iterable(["c", "a", "b", "a"], timestamp=lambda _: 0.0).apply(Ties)
    run(flow)
    assert Ties.fired == ["c", "a", "b", "a"]


def test_source_watermark_is_max_seen_minus_max_delay():
    seen = []

    class Marks(Operator):
        def on_batch(self, port, batch):
            pass

        def on_watermark(self, watermark):
            seen.append(watermark)

    flow = Dataflow()
    (flow.from_iterable([10.0, 12.0, 11.0, 15.0], timestamp=lambda t: t, max_delay=1.5, batch_size=1)
         .apply(Marks))
    run(flow)
    assert seen == [8.5, 10.5, 13.5, math.inf]


def test_datetime_timestamps_are_seconds_since_the_epoch_naive_as_utc():
    stamps = []

    class Stamps(Operator):
        def on_batch(self, port, batch):
            stamps.extend(batch.timestamps)

    aware = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    naive = dt.datetime(2026, 1, 1, 10, 0, 1)
    flow = Dataflow()
    flow.from_iterable([aware, naive, 7], timestamp=lambda t: t).apply(Stamps)
    run(flow)
    assert stamps == [aware.timestamp(), aware.timestamp() + 1.0, 7.0]


def test_a_timestamp_that_is_not_a_time_is_a_clear_error():
    flow = Dataflow()
    flow.from_iterable(["x"], timestamp=lambda r: r).collect()
    with pytest.raises(KernelError, match="timestamp must be a number of seconds or a datetime"):
        run(flow)


def test_bad_event_time_options_are_refused_when_the_flow_is_built():
    flow = Dataflow()
    with pytest.raises(ValueError, match="max_delay"):
        flow.from_iterable([1], timestamp=float, max_delay=-1)
    with pytest.raises(ValueError, match="max_delay needs timestamp"):
        flow.from_iterable([1], max_delay=1.0)
    with pytest.raises(TypeError, match="timestamp must be a function"):
        flow.from_iterable([1], timestamp=3)
    with pytest.raises(ValueError, match="idle_timeout"):
        flow.from_async_iterable(lambda: None, timestamp=float, idle_timeout=0)


class WithStamps(Operator):
    """Emits `(record, its timestamp)`: makes timestamps visible to collect()."""

    def on_batch(self, port, batch):
        assert isinstance(batch, TimedBatch)
        self.emit(list(zip(batch, batch.timestamps)))


@pytest.mark.parametrize("cores", [1, 2])
def test_timestamps_survive_map_filter_flat_map_and_the_exchange(cores):
    events = [(f"k{i % 3}", float(i)) for i in range(40)]
    flow = Dataflow()
    out = (flow.from_iterable(events, timestamp=lambda e: e[1], batch_size=5)
               .filter(lambda e: e[1] % 4 != 1)
               .flat_map(lambda e: [e, e] if e[1] % 4 == 2 else [e])
               .map(lambda e: (e[0], e[1] * 10))
               .key_by(lambda e: e[0])
               .map_values(lambda e: e[1])
               .apply(WithStamps)
               .collect())
    run(flow, cores=cores)
    assert all(value == stamp * 10 for (_key, value), stamp in out.items)
    assert sorted(stamp for _, stamp in out.items) == sorted(
        [float(i) for i in range(40) if i % 4 != 1] + [float(i) for i in range(40) if i % 4 == 2]
    )


# -- processing-time timers -----------------------------------------------------


async def test_processing_time_timers_run_on_the_virtual_clock_in_deadline_order():
    clock = VirtualClock()
    kernel = Kernel(clock=clock)
    fired = []

    async def task():
        kernel.call_later(1.0, lambda: fired.append("a"))
        kernel.call_later(0.5, lambda: fired.append("b"))
        kernel.call_later(1.0, lambda: fired.append("c"))
        cancelled = kernel.call_later(0.7, lambda: fired.append("never"))
        await asyncio.sleep(0)
        assert fired == []  # the virtual clock has not moved
        clock.advance(0.6)
        await asyncio.sleep(0)
        assert fired == ["b"]
        cancelled.cancel()
        clock.advance(0.4)
        await asyncio.sleep(0)
        assert fired == ["b", "a", "c"]

    kernel.spawn(task())
    await kernel.join()
    assert fired == ["b", "a", "c"]


async def test_timers_left_when_a_kernel_finishes_are_cancelled():
    kernel = Kernel()
    handles = []

    async def task():
        handles.append(kernel.call_later(3600.0, lambda: None))

    kernel.spawn(task())
    await kernel.join()
    assert handles[0].cancelled()


# -- idle sources ----------------------------------------------------------------


async def test_an_idle_source_does_not_hold_back_the_windows_of_another():
    """Two sources feed one window; one says nothing. Without idleness no
    window could close before both sources end, and both wait for one."""
    release = asyncio.Event()
    emitted = []

    async def busy():
        for t in range(10):
            yield ("k", float(t))
        await release.wait()

    async def silent():
        await release.wait()
        return
        yield  # an async generator that yields nothing

    def seen(result):
        emitted.append(result)
        release.set()

    flow = Dataflow()
    a = flow.from_async_iterable(busy, timestamp=lambda e: e[1], idle_timeout=0.05)
    b = flow.from_async_iterable(silent, timestamp=lambda e: e[1], idle_timeout=0.05)
    a.union(b).key_by(lambda e: e[0]).window(Tumbling(5.0)).count().sink(seen)
    await asyncio.wait_for(run_async(flow), timeout=10)
    # the window [0, 5) closed while the silent source was idle, before the end
    assert emitted[0][1].end == 5.0 and emitted[0][2] == 5


async def take_a_byte(fd: int, timeout: float) -> bool:
    """Read one byte of a non-blocking pipe shared by several processes,
    waiting (on the event loop) up to `timeout` seconds for one to come."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return os.read(fd, 1) == b"w"
        except BlockingIOError:
            pass
        readable = loop.create_future()
        loop.add_reader(fd, lambda done=readable: done.done() or done.set_result(None))
        try:
            await asyncio.wait_for(readable, max(0.0, deadline - loop.time()))
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)


def test_an_idle_kernel_does_not_hold_back_the_windows_of_another():
    """On two kernels, kernel 1 gets no events at all (every record of the
    source is kernel 0's share); kernel 0's windows close anyway, while the
    sources are still open: each source, after its last event, waits for a
    window to come out (the sink writes to a pipe) before it ends."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)

    async def events():
        for t in range(0, 20, 2):
            yield ("k", float(t))  # position i -> kernel i % 2: kernel 0 gets even positions
            yield None  # kernel 1's share: dropped below
        if not await take_a_byte(read_end, timeout=5.0):
            yield ("timed out", 100.0)  # no window came out while the sources were open

    def note(result):
        os.write(write_end, b"ww")  # one byte for each kernel's source

    flow = Dataflow()
    windows = (flow.from_async_iterable(events, timestamp=lambda e: e[1] if e else 0.0, idle_timeout=0.1)
                   .filter(lambda e: e is not None)
                   .key_by(lambda e: e[0]).window(Tumbling(4.0)).count())
    windows.sink(note)
    out = windows.collect()
    try:
        run(flow, cores=2)
    finally:
        os.close(read_end)
        os.close(write_end)
    got = sorted((key, w.start, n) for key, w, n in out.items)
    assert got == [("k", float(t), 2) for t in range(0, 20, 4)]
    assert windows.late_count.value == 0


class Stop(BaseException):
    """A user's own control-flow exception, outside the Exception hierarchy."""


@pytest.mark.parametrize("exc", [ZeroDivisionError("division by zero"), Stop("halt"), SystemExit(0),
                                 GeneratorExit("closing")],
                         ids=["ZeroDivisionError", "Stop", "SystemExit", "GeneratorExit"])
async def test_a_processing_time_timer_that_raises_fails_the_run_naming_it(exc):
    """Raised as it was, a timer's error named nothing, its SystemExit(0)
    ended a one-kernel run as if it had completed (and the process, exit
    status 0), and its Stop went past an `except Exception`."""
    kernel = Kernel()

    def tick():
        raise exc

    async def task():
        kernel.call_later(0.0, tick)
        await asyncio.Event().wait()  # never set: the failure ends the run

    kernel.spawn(task())
    with pytest.raises(TaskError) as info:
        await asyncio.wait_for(kernel.join(), timeout=10)
    assert str(info.value) == (f"task 'call_later({tick.__qualname__})' raised "
                               f"{type(exc).__name__}: {exc}")
    assert info.value.__cause__ is exc


async def test_a_timer_due_when_the_run_fails_is_never_called():
    """The run had failed (the first timer raised) and the kernel's wait
    woke on the loop's next turn: the timers due meanwhile still ran, the
    epoch timer among them (it snapshotted an epoch after a step had failed
    in the middle of a batch: tests/state/test_session30_failure_exactly_once.py)."""
    kernel = Kernel()
    called = []

    def boom():
        raise ZeroDivisionError("boom")

    async def task():
        kernel.call_later(0.0, boom)
        kernel.call_later(0.0, lambda: called.append("after the failure"))
        await asyncio.Event().wait()  # never set: the failure ends the run

    kernel.spawn(task())
    with pytest.raises(TaskError):
        await asyncio.wait_for(kernel.join(), timeout=10)
    assert called == []


async def test_a_processing_time_timers_keyboard_interrupt_fails_the_run_as_itself():
    kernel = Kernel()

    def interrupt():
        raise KeyboardInterrupt

    async def task():
        kernel.call_later(0.0, interrupt)
        await asyncio.Event().wait()  # never set: the interrupt ends the run

    kernel.spawn(task())
    with pytest.raises(KeyboardInterrupt):
        async with asyncio.timeout(10):  # (not wait_for: a task's KeyboardInterrupt ends the loop)
            await kernel.join()
