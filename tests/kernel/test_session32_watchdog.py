"""A kernel whose loop does not come back is reported while it is blocked
(kernel/scheduling/_watchdog.py): the step or task, for how long, and where
its thread is. Before, a function blocked for ever hung the run without a
word (two kernel processes sharing an HTTP connection opened before the run
did so, each reading the other's reply)."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from types import SimpleNamespace

import pytest

from kernel import Dataflow, Kernel, run, run_async
from kernel.scheduling import _watchdog

BLOCKED = "has not handed the event loop back"


@pytest.fixture
def quick(monkeypatch):
    """The watchdog looking every 20 ms and reporting from 0.3 s (the
    process's thread, still there after an earlier run, looks at once, then
    every 20 ms)."""
    monkeypatch.setattr(_watchdog, "REPORT_AFTER", 0.3)
    monkeypatch.setattr(_watchdog, "CHECK", 0.02)
    _watchdog._wake.set()


class _Reports(logging.Handler):
    """The watchdog's reports on logger `kernel`: kept, appended to `path`
    (a kernel process's copy of this handler writes there), and `arrived`
    is set at the `wanted`-th, in whichever process logged it."""

    def __init__(self, path, wanted: int = 1) -> None:
        super().__init__()
        self.path, self.wanted = path, wanted
        self.records: list[logging.LogRecord] = []
        self.arrived = threading.Event()

    def emit(self, record) -> None:
        if BLOCKED not in record.getMessage():
            return
        self.records.append(record)
        with open(self.path, "a") as out:
            out.write(f"{record.kernel}\t{getattr(record, 'step', '')}\t{record.getMessage()}\n\0")
        if len(self.records) >= self.wanted:
            self.arrived.set()

    def written(self) -> list[list[str]]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as reports:
            return [entry.strip("\n").split("\t", 2) for entry in reports.read().split("\0") if entry.strip()]


@pytest.fixture
def reports(tmp_path):
    made = []

    def attach(wanted: int = 1) -> _Reports:
        handler = _Reports(tmp_path / f"reports-{len(made)}.txt", wanted)
        logging.getLogger("kernel").addHandler(handler)
        made.append(handler)
        return handler

    yield attach
    for handler in made:
        logging.getLogger("kernel").removeHandler(handler)


def test_a_step_blocked_on_one_kernel_is_reported_while_it_waits_with_where_it_waits(quick, reports):
    """A map waits on an event that only the second report sets: it is
    reported at 0.3 s and again at 0.6 s, naming the map, its function and
    the activation it runs in (logged as its `step`), with the
    function's own line innermost-last and none of the library's frames
    that called it; it then returns and the run ends with every record."""
    seen = reports(wanted=2)

    def wait_for_reports(x):
        if x == 3:
            assert seen.arrived.wait(10), "no report came"
        return x

    flow = Dataflow("blocked")
    out = flow.from_iterable(range(6)).map(wait_for_reports).collect()
    run(flow)
    assert out.items == list(range(6))
    first, second = (record.getMessage() for record in seen.records[:2])
    assert re.search(rf"^\[kernel 0\] operator 'map\(wait_for_reports\) \(step 1\)', function '[\w.<>]+"
                     rf"\.wait_for_reports', run in the activation of from_iterable \(step 0\), {BLOCKED} "
                     r"for 0\.3 s and is still running", first), first
    assert f"{BLOCKED} for 0.6 s" in second, second
    # the step blocked (session 40: it was the activation, from_iterable (step 0))
    assert seen.records[0].step == "map(wait_for_reports) (step 1)" and seen.records[0].kernel == 0
    where = first.split("(innermost last):\n", 1)[1]
    assert where.startswith(f'  File "{__file__}", line ') and "in wait_for_reports" in where, where
    assert "seen.arrived.wait(10)" in where and "threading.py" in where
    assert "kernel/runtime" not in where and "operators/" not in where


def test_a_step_blocked_in_one_of_two_kernel_processes_is_reported_by_that_kernel(quick, reports):
    """On two kernel processes only kernel 1 has the record that blocks
    (the event is set in that process, by its own copy of the handler, at
    its watchdog's report); kernel 0 goes on and reports nothing."""
    seen = reports()

    def wait_for_a_report(x):
        if x == 1:
            assert seen.arrived.wait(10), "no report came"
        return x

    flow = Dataflow("blocked")
    out = flow.from_iterable(range(8)).map(wait_for_a_report).collect()
    run(flow, cores=2)
    assert sorted(out.items) == list(range(8))
    written = seen.written()
    # the step blocked (session 40: it was the activation, from_iterable (step 0))
    assert [(kernel, step) for kernel, step, _ in written] == [("1", "map(wait_for_a_report) (step 1)")], \
        written
    assert "in wait_for_a_report" in written[0][2]


def test_a_busy_kernel_whose_activations_each_return_is_never_reported(quick, reports):
    """Activations of 50 ms each (longer than the watchdog's 20 ms between
    looks, so most looks find the loop blocked), for three times the
    report's 0.3 s: the loop answers between them, and each answer starts
    the count again, so no report, on one kernel and on two."""
    seen = reports()

    def a_little_work(x):
        time.sleep(0.05)
        return x

    for cores in (1, 2):
        flow = Dataflow("busy")
        out = flow.from_iterable(range(20 * cores), batch_size=1).map(a_little_work).collect()
        started = time.monotonic()
        run(flow, cores=cores)
        assert sorted(out.items) == list(range(20 * cores))
        assert time.monotonic() - started > 0.9  # long enough to have been reported twice
    assert seen.written() == [] and seen.records == []


async def test_a_kernel_task_blocked_is_reported_by_the_tasks_name(quick, reports):
    seen = reports()

    async def blocking():
        assert seen.arrived.wait(10), "no report came"

    kernel = Kernel()
    kernel.spawn(blocking(), name="reader")
    await kernel.join()
    message = seen.records[0].getMessage()
    assert message.startswith(f"[kernel 0] task 'reader' {BLOCKED} for 0.3 s"), message
    where = message.split("(innermost last):\n", 1)[1]
    assert where.startswith(f'  File "{__file__}", line ') and "in blocking" in where, where
    assert "asyncio" not in where


async def test_the_hosts_own_code_blocking_the_loop_is_not_reported(quick, reports):
    """Beside `run_async`, a coroutine of the host blocks the loop for 0.8 s
    (two reports' worth) between the kernel's slices: the host's business,
    not the kernel's; nothing reported. The watchdog did look meanwhile:
    told to blame anything, it reports the host's wait."""
    seen = reports()

    async def source():
        for i in range(40):
            yield i
            await asyncio.sleep(0.001)

    async def host():
        await asyncio.sleep(0.01)
        time.sleep(0.8)

    for blame_anything in (False, True):
        flow = Dataflow("beside a host")
        out = flow.from_async_iterable(source()).collect()
        with pytest.MonkeyPatch.context() as patch:
            if blame_anything:
                patch.setattr(Kernel, "_blocked_in", lambda self, frames: "anything")
            await asyncio.gather(run_async(flow), host())
        assert out.items == list(range(40))
        assert bool(seen.records) == blame_anything, [r.getMessage() for r in seen.records]
    assert "in host" in seen.records[0].getMessage()


def test_a_stop_of_the_process_is_not_counted_as_the_steps_time(quick, reports, monkeypatch):
    """The watchdog's clock jumps 5 s in the middle of a step's 0.1 s wait,
    between two looks that find the loop blocked (as it does when the
    process is stopped and continued, or the machine suspended): the jump
    counts as one look's interval (0.06 s), so nothing is reported. With
    the jump counted, it is reported."""
    seen = reports()
    jumped = SimpleNamespace(by=0.0)
    real = time.monotonic
    monkeypatch.setattr(_watchdog, "time", SimpleNamespace(monotonic=lambda: real() + jumped.by))

    def waits_through_a_jump(x):
        if x == 2:
            time.sleep(0.05)  # looks that find the loop blocked
            jumped.by = 5.0
            time.sleep(0.05)
        return x

    flow = Dataflow("stopped")
    out = flow.from_iterable(range(4)).map(waits_through_a_jump).collect()
    run(flow)
    assert out.items == list(range(4))
    assert seen.records == []


def test_no_stall_notices_means_no_reports_and_a_longer_threshold_delays_the_first(quick, reports):
    """`stall_threshold=inf` turns the reports off with the stall notices;
    a threshold longer than the watchdog's own is its first report."""
    seen = reports()

    def waits(x):
        time.sleep(0.5)
        return x

    flow = Dataflow("quiet")
    out = flow.from_iterable(range(1)).map(waits).collect()
    run(flow, stall_threshold=float("inf"))
    assert out.items == [0] and seen.records == []
    flow = Dataflow("late")
    out = flow.from_iterable(range(1)).map(waits).collect()
    run(flow, stall_threshold=0.7)
    assert out.items == [0] and seen.records == []
    run_ = Dataflow("early")
    out = run_.from_iterable(range(1)).map(waits).collect()
    run(run_, stall_threshold=0.2)  # below the watchdog's 0.3 s: reported at 0.3 s
    assert out.items == [0] and len(seen.records) == 1


def test_one_watchdog_thread_serves_runs_in_a_row_and_ends_a_while_after_the_last(quick, monkeypatch):
    """Runs in a row share the process's watchdog thread (one started for
    each run cost a run of one record ~0.3 ms); LINGER after the last
    kernel ends, it ends too, leaving no thread behind."""
    # (LINGER long while the runs follow one another: with 0.1 s throughout,
    # a loaded machine took longer than that between two runs, and the
    # thread rightly ended between them, and another started; then short:
    # the thread reads it at each look)
    monkeypatch.setattr(_watchdog, "LINGER", 60.0)
    watchers = set()
    for _ in range(5):
        flow = Dataflow("ends")
        flow.from_iterable(range(3)).collect()
        run(flow)
        watchers.add(_watchdog._watcher)
    assert len(watchers) == 1 and None not in watchers and _watchdog.running() == 1
    monkeypatch.setattr(_watchdog, "LINGER", 0.1)
    (watcher,) = watchers
    assert watcher.done.acquire(timeout=10)  # released as the thread ends
    assert _watchdog.running() == 0


def test_kernel_processes_are_forked_without_the_watchdog_thread_a_run_of_one_kernel_left():
    """The thread lingers after a run of one kernel; a run of two kernels
    right after forks them with it gone (from Python 3.12 a fork beside a
    thread is warned of: pytest shows it)."""
    seen_at_fork = []
    os.register_at_fork(before=lambda: seen_at_fork.append(_watchdog.running()))
    flow = Dataflow("one")
    flow.from_iterable(range(3)).collect()
    run(flow)
    assert _watchdog.running() == 1  # lingering
    flow = Dataflow("two")
    out = flow.from_iterable(range(3)).collect()
    run(flow, cores=2)
    assert sorted(out.items) == [0, 1, 2]
    assert seen_at_fork and set(seen_at_fork) == {0}, seen_at_fork


def test_the_watchdog_thread_is_no_thread_the_gil_hand_over_pauses_for(quick, reports, monkeypatch):
    """A busy kernel alone in its process makes no pause for other threads
    (`_handover.py`), its watchdog's thread running and, after a report
    (logging gives the reporting thread an entry of threading's), still
    none: the pauses cost ~2% of a busy kernel."""
    from kernel.scheduling import _handover

    pauses = []
    monkeypatch.setattr(_handover, "time", SimpleNamespace(sleep=pauses.append, monotonic=time.monotonic))
    seen = reports()

    def blocks_once_then_busy(x):
        if x == 0:
            assert seen.arrived.wait(10), "no report came"
        for _ in range(2_000):  # ~0.1 ms of work a record, 40 ms in all: slices past many switch intervals
            pass
        return x

    _watchdog.retire_if_idle()
    alone = threading.active_count()  # this process's own threads (1 but under a test runner's)
    flow = Dataflow("busy")
    out = flow.from_iterable(range(400), batch_size=1).map(blocks_once_then_busy).collect()
    run(flow)
    assert out.items == list(range(400)) and len(seen.records) == 1
    assert _watchdog.running() == 1 and threading.active_count() == alone
    if alone == 1:
        assert pauses == []
