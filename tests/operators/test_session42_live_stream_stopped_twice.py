"""A live reader whose run is cancelled is stopped twice: by its task
`until_ended` (cancelled after its first step) and by that task's done
callback (`watch`), one turn of the loop later. A run taking the reader
over in between (`LiveReader.of`, before its `start`) had it listed as
left over again by the second stop, and its `_starting` cleared: a third
run took over the very reader the second was about to read with. The
done callback now stops only a reader not stopped yet (a task cancelled
before its first step)."""

from __future__ import annotations

import asyncio
import os

from operators._live_input import LiveReader, _left_over


class _Run:
    """A run's key, as its kernel is (held weakly by the reader)."""


async def _taken_over_between_the_two_stops() -> tuple[LiveReader, LiveReader, LiveReader]:
    read, write = os.pipe()
    with os.fdopen(read) as stream:
        try:
            first_run, second_run, third_run = _Run(), _Run(), _Run()
            os.write(write, b"0\n")
            reader = LiveReader.of(stream, 64, "lines in", stream, first_run)
            reader.start(lambda: None)
            task = asyncio.create_task(reader.until_ended())
            reader.watch(task)
            await asyncio.sleep(0)  # (the task's first step: it waits for the input's end)
            task.cancel()
            await asyncio.sleep(0)  # (the task's stop; its done callback comes one turn after this)
            assert reader._stopped and _left_over.get(id(stream)) is reader
            second = LiveReader.of(stream, 64, "lines in", stream, second_run)
            await asyncio.sleep(0)  # (the done callback)
            third = LiveReader.of(stream, 64, "lines in", stream, third_run)
            return reader, second, third
        finally:
            os.close(write)  # (the end: the reader's thread ends)


def test_a_reader_taken_over_between_its_cancelled_run_s_two_stops_is_not_left_over_again():
    reader, second, third = asyncio.run(_taken_over_between_the_two_stops())
    assert second is reader  # (the second run took the reader over, with what it read)
    assert reader._starting  # (about to be started: another thread's run sees it read for a run)
    assert third is not reader  # (not taken over again, from under the second run)


def test_a_reader_whose_task_was_cancelled_before_its_first_step_is_still_left_over():
    async def cancelled_at_once() -> bool:
        read, write = os.pipe()
        with os.fdopen(read) as stream:
            try:
                reader = LiveReader.of(stream, 64, "lines in", stream, _Run())
                reader.start(lambda: None)
                task = asyncio.create_task(reader.until_ended())
                reader.watch(task)
                task.cancel()  # (before its first step: its body never runs)
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                return reader._stopped and _left_over.get(id(stream)) is reader
            finally:
                os.close(write)

    assert asyncio.run(cancelled_at_once())
