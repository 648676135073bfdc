"""Telling of a kernel whose loop does not come back.

The stall detector reports an activation once it returns. One that never
returns (a function blocked for ever on a socket, a lock, a queue) said
nothing: the run hung without a word. Two kernel processes sharing an HTTP
connection opened before the run hung so, each reading the other's reply
and then waiting for its own.

So each running kernel has a watchdog: the process's watchdog thread asks
the kernel's loop, once a `CHECK` interval, to run a callback, and waits
for it. A loop that has
not run the callback for `REPORT_AFTER` seconds is blocked; if it is blocked
in the kernel's work (an activation of a slice, or one of the kernel's
tasks) the watchdog logs which step or task (inside an activation, the step
and function the frames are in, where the activation says:
kernel/runtime/_blocked_step.py), for how long, and where it is
(the innermost frames of the loop's thread), then again after twice as long,
four times, and so on. A loop blocked in the host's own code (a coroutine of
the application beside `run_async`) is the host's business: not reported.

A loop that answered the last question may have stopped at any time
since, up to a CHECK before the look that first finds a question
unanswered: counted from that question alone, a first report came 10 to
11 s after the step began (11 s for one blocked as the run starts: a fresh
thread's first look is a CHECK after it starts). So the kernel says when
the slice the loop is in began (`since`), and the time from then to the
question counts too (at most a CHECK: `_before_asked`), and the thread
wakes when a report is due, not at its next CHECK: the first report on a
step comes REPORT_AFTER after its slice began (measured: 10.0 s with
`python -m kernel.run`; tests/kernel/test_session42_watchdog_first_report.py).
A task, a timer or the kernel's start blocked, of which the kernel has no
such time, is reported 10 to 11 s after.

The time counted is the sum of the watchdog's own intervals, each at most a
few `CHECK`s: a process stopped (SIGSTOP, Ctrl-Z, a debugger) or a machine
suspended comes back to one long interval, which counts as three `CHECK`s
at most, so the stop is not blamed on the step it interrupted.

Costs: one thread for every kernel of the process (started with the first,
ending LINGER seconds after the last), waking once a `CHECK` (a callback on
each kernel's loop and a few attribute reads), and when a report is due. The GIL hand-over before
slices (`_handover.py`) does not count it as a thread that waits for the
GIL: it waits for its interval, not for the GIL.
"""

from __future__ import annotations

import _thread
import asyncio
import os
import sys
import threading
import time
import traceback

from kernel.scheduling._signal_mask import main_thread_signals

REPORT_AFTER = 10.0  # seconds the loop must be blocked before the first report
CHECK = 1.0  # seconds between the watchdog's looks
_FRAMES = 12  # the most frames of the loop's thread a report shows
# where the library's own code and asyncio's live: their frames outside a user's function (those
# that called it) are left out of a report
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_MACHINERY = tuple(os.path.join(_ROOT, package) + os.sep
                   for package in ("kernel", "operators", "net", "state", "aliases"))
_MACHINERY += (os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep,
               "<fused chain ")  # a fused chain's generated comprehension (operators/_fusion.py)
# a debugger's (pdb's, ipdb's: the standard library's bdb) handling of a line or call: the thread is
# at its prompt. (Not any bdb frame: under `python -m pdb` the whole program runs in one.)
_BDB = os.path.join(os.path.dirname(os.path.abspath(os.__file__)), "bdb.py")
# One thread watches every kernel running in this process, and waits
# LINGER seconds for another before it ends: a thread started for each run
# cost a one-kernel run of one record ~0.3 ms (1.0 -> 1.3 ms), its start
# and its first turn at the GIL. It is started with `_thread`, not as a
# `threading.Thread`, whose start waits for the new thread to run: in a
# kernel process, just forked, 0.53 ms against 0.16 (two kernels' run of
# one record: ~12.4 -> ~14.0 ms with both kernels' threads so started).
# So `threading` does not count it (`threading.active_count()`, the GIL
# hand-over's look for other threads, `threading.enumerate()`), and the
# entry logging gives it as it reports is taken out again.
LINGER = 2.0


class _Watcher:
    """The thread's token: `done` is held until it ends."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = _thread.allocate_lock()
        self.done.acquire()


_lock = threading.Lock()  # guards the three below
_watched: set[Watchdog] = set()
_watcher: _Watcher | None = None  # the thread running now
_retire = False  # the thread ends at its next look if it watches no kernel then
_wake = threading.Event()  # set: the thread looks now (tests that change CHECK; `retire_if_idle`)


def running() -> int:
    """How many watchdog threads this process has now (0 or 1)."""
    return 0 if _watcher is None else 1


def retire_if_idle() -> None:
    """End the thread now if it watches no kernel (a launcher about to fork
    its kernels: from Python 3.12 a fork beside a thread is warned of, and
    the thread lingers for LINGER after a run of one kernel)."""
    global _retire
    with _lock:
        watcher = _watcher
        if watcher is None or _watched:
            return
        _retire = True
    _wake.set()
    if watcher.done.acquire(timeout=10):  # (it ends at once; should it not, fork beside it)
        watcher.done.release()


def _none_in_a_forked_child() -> None:
    # a child forked while a kernel ran in its parent has none of its parent's threads
    global _lock, _watched, _watcher, _retire, _wake
    _lock, _watched, _watcher, _retire, _wake = threading.Lock(), set(), None, False, threading.Event()


os.register_at_fork(after_in_child=_none_in_a_forked_child)


def _watch_every_kernel(watcher: _Watcher) -> None:
    global _watcher
    try:
        _watch_until_none_for_a_while()
    finally:  # (should it fail: the next kernel to start starts another)
        with _lock:
            if _watcher is watcher:
                _watcher = None
        watcher.done.release()


def _watch_until_none_for_a_while() -> None:
    global _watcher, _retire
    idle = 0.0
    last = time.monotonic()
    wait = CHECK
    while True:
        if _wake.wait(wait):
            _wake.clear()
        wait = CHECK
        now = time.monotonic()
        # a stop of the process (or of the machine) is one interval, not the loop's doing
        elapsed, last = min(now - last, 3 * CHECK), now
        with _lock:
            watched = list(_watched)
            if not watched:
                idle += elapsed
                # (decided under the lock: a kernel starting now starts another)
                if idle >= LINGER or _retire:
                    _watcher, _retire = None, False
                    return
                continue
            _retire = False
        idle = 0.0
        for watchdog in watched:
            try:
                wait = min(wait, watchdog._look(elapsed, now))
            except Exception:  # (its `where` or `log` failing): that kernel is no longer watched
                watchdog.stop()


class Watchdog:
    """Watches one kernel's loop from the process's watchdog thread
    (`start`, `stop`), reporting first once it has been blocked
    `REPORT_AFTER` seconds, or `at_least` where that is longer (the
    kernel's stall threshold).

    `where(frames)` is given the loop thread's frames, innermost first, and
    returns what is blocked (an activation's name, "task 'reader'"), or
    `(what, step)` where the report names more than the step it is logged
    as (the step and function blocked inside an activation), or None when
    the frames are not the kernel's work; `log(message, step)` writes the
    report.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, where, log, at_least: float = 0.0,
                 since=None) -> None:
        self._loop = loop
        self._after = max(REPORT_AFTER, at_least)
        self._where = where
        self._log = log
        self._since = since
        self._thread_id = threading.get_ident()  # the loop's thread: the one that starts us
        self._asked = self._answered = 0  # questions asked (the thread), answered (the loop)
        self._asked_at = 0.0  # when (time.monotonic()) the last question was asked
        self._blocked = 0.0  # seconds the loop has not answered, as counted
        self._report_at = self._after
        self._credited = False  # the time blocked before the question is counted (`_before_asked`)

    def start(self) -> None:
        global _watcher
        with _lock:
            _watched.add(self)
            if _watcher is None:
                watcher = _Watcher()
                try:
                    with main_thread_signals():
                        _thread.start_new_thread(_watch_every_kernel, (watcher,))
                except BaseException:
                    _watched.discard(self)
                    raise
                _watcher = watcher

    def stop(self) -> None:
        with _lock:
            _watched.discard(self)

    def _answer(self, question: int) -> None:
        self._answered = question

    def _look(self, elapsed: float, now: float) -> float:
        """The thread's look at `now`, `elapsed` seconds (as counted) after
        its last; the seconds until this kernel's next report is due, at
        most CHECK (the thread looks again by then)."""
        if self._answered == self._asked:
            self._asked += 1
            self._asked_at = now
            self._blocked, self._report_at, self._credited = 0.0, self._after, False
            try:
                self._loop.call_soon_threadsafe(self._answer, self._asked)
            except RuntimeError:  # the loop closed under a kernel that did not stop us
                self.stop()
            return CHECK
        self._blocked += elapsed
        if not self._credited:
            self._credited = True
            self._blocked += self._before_asked()
        if self._blocked >= self._report_at:
            self._report_at *= 2
            if not self._report(self._blocked):  # at a debugger's prompt: the user's time, not the step's
                self._blocked, self._report_at = 0.0, self._after
        return min(CHECK, self._report_at - self._blocked)

    def _before_asked(self) -> float:
        """How long the loop had been blocked when its unanswered question
        was asked: it answered the one before, up to a CHECK earlier, and may
        have stopped any time since, so a count from the question alone
        made the first report come up to a CHECK late (10 to 11 s after a
        step began; 11 s for one blocked as the run starts, a fresh thread's
        first look a CHECK after it). Where the kernel says when its current
        work began (`since(frames)`: a slice of activations), the time from
        then to the question, at most a CHECK (a stop of the process
        meanwhile is not counted beyond that); else none."""
        if self._since is None:
            return 0.0
        frame = sys._current_frames().get(self._thread_id)
        frames = []
        while frame is not None:
            frames.append(frame)
            frame = frame.f_back
        began = self._since(frames)
        if began is None:
            return 0.0
        return min(max(self._asked_at - began, 0.0), CHECK)

    def _report(self, blocked: float) -> bool:
        """Reports the loop's thread if it is in the kernel's work; False
        if it waits at a debugger's prompt (a breakpoint in a step)."""
        frame = sys._current_frames().get(self._thread_id)
        frames = []
        while frame is not None:
            frames.append(frame)
            frame = frame.f_back
        if any(f.f_code.co_name == "trace_dispatch" and f.f_code.co_filename == _BDB for f in frames):
            return False
        what = step = self._where(frames)
        if what is None:
            return True
        if what.__class__ is tuple:
            what, step = what
        # (written here: a StackSummary's format() parses each line with `ast` for its carets on
        # 3.11, and the ast module's state is the interpreter's: a test parsing on the main thread
        # meanwhile failed with "AST constructor recursion depth mismatch")
        inner = [f'  File "{f.filename}", line {f.lineno}, in {f.name}\n'
                 + (f"    {f.line}\n" if f.line else "")
                 for f in traceback.StackSummary.extract((f, f.f_lineno) for f in reversed(_shown(frames)))]
        self._log(
            f"{what} has not handed the event loop back for {blocked:.1f} s and is still running: "
            f"nothing else of this kernel runs meanwhile (a function blocked on a lock, a socket or "
            f"a queue?); its thread is at (innermost last):\n{''.join(inner).rstrip()}",
            step,
        )
        # logging named the thread (`threading.current_thread()`), which made it an entry of
        # threading's: taken out, or the hand-over would take it for a thread that wants the GIL
        getattr(threading, "_active", {}).pop(_thread.get_ident(), None)
        return True


def _shown(frames: list) -> list:
    """The frames a report shows (innermost first): from the innermost out
    to the outermost of the user's own (the function a step calls, a task's
    coroutine, and what they call), leaving out the library's and asyncio's
    frames that called it; their innermost ones where the thread is in no
    user code. At most `_FRAMES`."""
    shown = []
    users = False
    for frame in frames[:_FRAMES]:
        machinery = frame.f_code.co_filename.startswith(_MACHINERY)
        if machinery and users:
            break
        users = users or not machinery
        shown.append(frame)
    return shown
