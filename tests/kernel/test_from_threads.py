"""Work handed to a kernel's loop from another thread (a snapshot writer,
a cluster relay's handover reader): once the loop has closed, the thread
learns it and stops quietly, instead of dying with `RuntimeError: Event
loop is closed` printed after the run (seen once after a cluster crash)."""

from __future__ import annotations

import asyncio
import threading

import uvloop

from kernel.scheduling._from_threads import call_soon_from_thread


def test_a_thread_hands_work_to_a_running_loop():
    async def main():
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        told = []

        def thread():
            told.append(call_soon_from_thread(loop, done.set))

        threading.Thread(target=thread).start()
        await asyncio.wait_for(done.wait(), 5)
        return told

    assert uvloop.run(main()) == [True]


def test_a_closed_loop_is_reported_not_raised_in_the_thread():
    loop = uvloop.new_event_loop()
    loop.close()
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(call_soon_from_thread(loop, print, "never")))
    thread.start()
    thread.join()
    assert outcome == [False]


def test_other_runtime_errors_still_raise():
    class Refusing(asyncio.AbstractEventLoop):
        def call_soon_threadsafe(self, *args):
            raise RuntimeError("not a closed loop")

        def is_closed(self):
            return False

    try:
        call_soon_from_thread(Refusing(), print)
    except RuntimeError as exc:
        assert str(exc) == "not a closed loop"
    else:
        raise AssertionError("the RuntimeError was swallowed")
