"""`from_iterable` over a live stream (the standard input, a pipe, a FIFO, a
socket's file) hands each record on as it arrives (operators/_live_input.py).

Before, the source read it on the kernel's event loop, `list(islice(it,
batch_size))`, which waits for a whole batch (1,024 lines) or the end: a
slow writer's lines came out only once it ended, a writer waiting for the
pipeline's answer before writing its next line waited for ever, and the
loop was held meanwhile (no timers, epochs; the watchdog reported a stall).
Each case has a deadline: a test of the old code fails, it does not hang."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading

import pytest
from _live_streams import DEADLINE, Answers, cancelled_while_reading, piped
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel.operators._shares import Share, merge_consumed

from kernel import Dataflow, Operator, run

ECHO = """
    import sys
    from kernel import Dataflow
    flow = Dataflow("echo")
    flow.from_iterable(sys.stdin).map(str.strip).map(lambda line: f"echo {line}").print()
"""


def _lines_of(stream) -> queue.Queue:
    """The lines `stream` gives, on a queue (read on a thread of the test,
    so that each can be waited for with a deadline)."""
    lines: queue.Queue = queue.Queue()

    def read():
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


@pytest.mark.parametrize("cores", [1, 2])
def test_an_interactive_exchange_over_the_standard_input_completes(tmp_path, cores):
    """The writer writes a line, waits for the pipeline's answer to it, then
    writes the next: each answer comes while the input stays open."""
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(ECHO))
    process = subprocess.Popen([sys.executable, "-m", "kernel.run", str(script), "--cores", str(cores),
                                "--quiet"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        answers = _lines_of(process.stdout)
        for word in ("one", "two", "three"):
            process.stdin.write(f"{word}\n")
            process.stdin.flush()
            try:
                answer = answers.get(timeout=DEADLINE)
            except queue.Empty:
                pytest.fail(f"no answer to {word!r} within {DEADLINE} s while the input stayed open")
            assert answer == f"echo {word}\n"
        process.stdin.close()
        assert process.wait(timeout=DEADLINE) == 0, process.stderr.read()
        assert answers.get(timeout=DEADLINE) is None  # nothing more
    finally:
        process.kill()
        process.wait()


def _exchange_over_a_pipe(batch_size: int, lines: list[str]) -> list:
    """`run(flow)` in this thread over a pipe that a thread writes a line at
    a time, each once the pipeline has handed the one before on."""
    read, write = os.pipe()
    seen: queue.Queue = queue.Queue()
    late: list[str] = []

    def writer():
        with os.fdopen(write, "w") as out:
            for line in lines:
                out.write(line + "\n")
                out.flush()
                try:
                    seen.get(timeout=DEADLINE)
                except queue.Empty:
                    late.append(line)  # (and go on: the old code reads on once the pipe ends)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with os.fdopen(read) as stream:
            flow = Dataflow("exchange")
            out = flow.from_iterable(stream, batch_size=batch_size).map(str.strip) \
                .apply(lambda: Answers(seen)).collect()
            run(flow)
    finally:
        thread.join()
    assert not late, f"no answer within {DEADLINE} s to {late}"
    return out.items


@pytest.mark.parametrize("batch_size", [1, 1024])
def test_records_of_a_slow_writer_come_out_before_it_ends(batch_size):
    assert _exchange_over_a_pipe(batch_size, ["a", "b", "c"]) == ["a", "b", "c"]


def test_a_wake_lost_between_the_reader_and_the_kernel_costs_a_record_a_look_not_the_run(monkeypatch):
    # (no wake from the reader's thread: the source, asleep, looks again
    # within _LAST_LOOK; it slept until the end of the input, and the writer,
    # waiting for each answer, waited for ever)
    from kernel.operators import _live_input

    monkeypatch.setattr(_live_input, "_wake_it", lambda wake: None)
    assert _exchange_over_a_pipe(1, ["a", "b", "c"]) == ["a", "b", "c"]


class _Ticks(Operator):
    """A processing-time timer, set as the run starts, that tells the test when it fires."""

    def __init__(self, fired: threading.Event) -> None:
        self.fired = fired

    def open(self, context):
        context.kernel.call_later(0.01, self.fired.set)

    def on_batch(self, port, batch):
        self.emit(batch)


def test_a_timer_fires_while_the_source_waits_for_input():
    """The kernel's loop is not held while the stream has nothing: a timer
    fires before the first line is written (the writer waits for it)."""
    fired = threading.Event()
    waited: list[bool] = []

    def write(out):
        waited.append(fired.wait(DEADLINE))
        out.write("only\n")

    with piped(write) as stream:
        flow = Dataflow("timer")
        out = flow.from_iterable(stream).map(str.strip).apply(lambda: _Ticks(fired)).collect()
        run(flow)
    assert waited == [True], f"the timer did not fire within {DEADLINE} s while the input waited"
    assert out.items == ["only"]


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_a_large_piped_input_is_read_exactly_once(tmp_path, cores):
    total = 200_000
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent("""
        import sys
        from kernel import Dataflow
        flow = Dataflow("count")
        flow.from_iterable(sys.stdin).map(int).print()
    """))
    data = "".join(f"{i}\n" for i in range(total))
    done = subprocess.run([sys.executable, "-m", "kernel.run", str(script), "--cores", str(cores), "--quiet"],
                          input=data, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(map(int, done.stdout.split())) == list(range(total))


@settings(max_examples=15, deadline=None)
@given(st.lists(st.lists(st.text("ab\u00e9", max_size=5), max_size=50), max_size=6),
       st.integers(1, 40))
def test_a_pipe_written_in_bursts_gives_every_line_once_in_order(bursts, batch_size):
    """Against the lines written: bursts of lines, each flushed (a chunk of
    the reader may end anywhere in them), whatever the batch size."""
    def write(out):
        for burst in bursts:
            out.write("".join(line + "\n" for line in burst))
            out.flush()

    with piped(write, encoding="utf-8") as stream:
        flow = Dataflow("bursts")
        out = flow.from_iterable(stream, batch_size=batch_size).map(lambda line: line[:-1]).collect()
        run(flow)
    assert out.items == [line for burst in bursts for line in burst]


def test_an_error_of_the_iterable_is_the_runs_naming_the_source():
    """A generator over a pipe that raises: the run's error names the
    source and says what was raised."""
    read, write = os.pipe()
    with os.fdopen(write, "w") as out:
        out.write("1\n2\nboom\n3\n")
    with os.fdopen(read) as stream:
        def numbers():
            for line in stream:
                if line == "boom\n":
                    raise ValueError("a bad line")
                yield int(line)

        flow = Dataflow("failing")
        flow.from_iterable(numbers()).collect()
        with pytest.raises(Exception) as info:
            run(flow)
    message = str(info.value)
    assert "from_iterable (step 0)" in message and "ValueError: a bad line" in message, message


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3000), st.sampled_from([1, 2, 3]), st.booleans(),
       st.lists(st.integers(1, 700), min_size=1, max_size=12))
def test_a_resumed_live_stream_keeps_exactly_what_take_from_keeps(read_before, old, others_ended, chunks):
    """`Share.unconsumed_at` (the live source's filter of what arrived, in
    chunks of any size) keeps what `Share.take_from` (the reference: the
    source before live streams) keeps of a stream resumed from a snapshot."""
    groups, records = 128, list(range(3_000))
    reader = Share(0, 1, groups)
    if read_before:
        reader.take_from(iter(records), read_before)
    snapshots = [reader.snapshot()] + [
        "ended" if others_ended else Share(k, old, groups).snapshot() for k in range(1, old)]
    snapshot = merge_consumed(snapshots, "ended", groups)
    expected = Share(0, 1, groups)
    expected.restore(snapshot)
    reference, _ = expected.take_from(iter(records), len(records) + 1)
    live = Share(0, 1, groups)
    live.restore(snapshot)
    kept, start = [], 0
    for size in chunks * (len(records) // sum(chunks) + 1):
        chunk = records[start:start + size]
        if not chunk:
            break
        kept += live.unconsumed_at(chunk, start)
        start += len(chunk)
        live.next = max(live.next, start)
    assert kept == reference
    assert live.snapshot() == expected.snapshot()


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_while_the_standard_input_waits_the_run_ends_cleanly(tmp_path, signal_number):
    """Ctrl-C (or SIGTERM) while the reader thread waits in a read of
    `sys.stdin.buffer`, on one kernel (in the launcher's process): the run
    ends at once, as before, and the interpreter's exit does not abort
    ("Fatal Python error: _enter_buffered_busy", freeing `sys.stdin` whose
    buffer's lock the waiting thread holds)."""
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent("""
        import sys
        from kernel import Dataflow
        flow = Dataflow("bytes")
        flow.from_iterable(sys.stdin.buffer).map(bytes.strip).print()
    """))
    process = subprocess.Popen([sys.executable, "-m", "kernel.run", str(script), "--quiet"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        answers = _lines_of(process.stdout)
        process.stdin.write(b"first\n")
        process.stdin.flush()
        assert answers.get(timeout=DEADLINE) == b"b'first'\n"
        process.send_signal(signal_number)
        process.wait(timeout=DEADLINE)
        errors = process.stderr.read().decode()
        assert "Fatal Python error" not in errors, errors
        assert process.returncode == 128 + signal_number, errors
    finally:
        process.kill()
        process.wait()


async def test_a_run_over_a_stream_after_one_cancelled_while_it_waited_gets_every_line():
    """The first run is cancelled while its reader waits in a read of the
    pipe; that read takes the next line when it comes. A second run over
    the same file object takes the reader over and gets that line too (a
    second reader thread lost it: ['2', '3'])."""
    import asyncio

    from kernel import run_async

    read, write = os.pipe()
    with os.fdopen(read) as stream, os.fdopen(write, "w") as out:
        await cancelled_while_reading(stream, out)
        second = Dataflow("second")
        rest = second.from_iterable(stream).map(str.strip).collect()
        await asyncio.wait_for(run_async(second), DEADLINE)
    assert rest.items == ["1", "2", "3"]
