"""The standard input on several kernel processes is kernel 0's
(kernel/execution/_standard_input.py). Before, multiprocessing gave every
kernel process /dev/null for it: `seq 10 | python -m kernel.run p.py
--cores 2` over `from_iterable(sys.stdin)` printed nothing and exited 0, and
`run(flow, cores=2)` over the caller's `sys.stdin` failed with "I/O
operation on closed file". Each case runs in a process of its own, its
standard input a real pipe (or a file given with `<`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter

import pytest

from kernel import Dataflow, run, run_async

LINES = 30_000


def _python(tmp_path, code: str, stdin, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, *args, str(script)] if args else [sys.executable, str(script)],
                          input=stdin if isinstance(stdin, bytes) else None,
                          stdin=None if isinstance(stdin, bytes) else stdin,
                          capture_output=True, timeout=120, cwd=tmp_path)


def _numbers(n: int = LINES) -> bytes:
    return "".join(f"{i}\n" for i in range(1, n + 1)).encode()


PRINTS_STDIN = """
    import sys
    from kernel import Dataflow
    flow = Dataflow("stdin")
    flow.from_iterable(sys.stdin).map(lambda line: int(line)).print()
"""


@pytest.mark.parametrize("cores", [2, 3])
def test_a_pipeline_file_reads_a_piped_standard_input_once_on_several_kernels(tmp_path, cores):
    """`from_iterable(sys.stdin)` in the pipeline file each kernel imports:
    kernel 0 reads the pipe whole, every line once."""
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(PRINTS_STDIN))
    done = subprocess.run([sys.executable, "-m", "kernel.run", str(script), "--cores", str(cores)],
                          input=_numbers(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(map(int, done.stdout.split())) == list(range(1, LINES + 1))


def test_a_standard_input_given_from_a_file_is_read_once_too(tmp_path):
    """`< numbers.txt`: a regular file, whose read position the kernels
    would share; kernel 0 reads it, as a pipe."""
    numbers = tmp_path / "numbers.txt"
    numbers.write_bytes(_numbers())
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(PRINTS_STDIN))
    with open(numbers, "rb") as given:
        done = subprocess.run([sys.executable, "-m", "kernel.run", str(script), "--cores", "2"],
                              stdin=given, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(map(int, done.stdout.split())) == list(range(1, LINES + 1))


def test_the_callers_standard_input_goes_on_in_kernel_0_from_where_the_caller_stopped(tmp_path):
    """The caller reads a header line (its buffer holding more), then runs
    a keyed count on two kernels over the rest: kernel 0 goes on from the
    caller's buffer, every line once, and the keys spread over both
    kernels (each kernel reports how many it counted)."""
    code = """
        import sys
        from kernel import Dataflow, current_kernel, run
        header = sys.stdin.readline().strip()
        flow = Dataflow("stdin")
        out = (flow.from_iterable(line.strip() for line in sys.stdin).map(int)
               .key_by(lambda x: x % 7).count()
               .map(lambda pair: (current_kernel().context.index, *pair)).collect())
        run(flow, cores=2)
        print(header)
        print(sorted(key_count for _, *key_count in out.items))
        print(sorted({kernel for kernel, _, _ in out.items}))
    """
    done = _python(tmp_path, code, b"numbers\n" + _numbers())
    assert done.returncode == 0, done.stderr.decode()
    header, counts, kernels = done.stdout.decode().splitlines()
    assert header == "numbers"
    expected = Counter(i % 7 for i in range(1, LINES + 1))
    assert counts == str(sorted([key, n] for key, n in expected.items()))
    assert kernels == "[0, 1]"


def test_a_function_that_reads_the_standard_input_itself_fails_the_run_naming_its_step(tmp_path):
    """A generator function over `sys.stdin` runs in every kernel; kernel 1's
    reading fails the run, named, instead of kernel 0 keeping its share of
    the lines and kernel 1 reading /dev/null (half the lines lost, exit 0)."""
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent("""
        import sys
        from kernel import Dataflow
        def numbers():
            for line in sys.stdin:
                yield int(line)
        flow = Dataflow("stdin")
        flow.from_iterable(numbers()).print()
    """))
    done = subprocess.run([sys.executable, "-m", "kernel.run", str(script), "--cores", "2"],
                          input=_numbers(), capture_output=True, timeout=120)
    assert done.returncode == 1
    error = done.stderr.decode()
    assert "operator 'from_iterable (step 0)': function 'numbers' raised StandardInputError" in error, error
    assert "kernel 1 read the standard input: on 2 kernels it is kernel 0's alone" in error
    assert "give from_iterable sys.stdin instead, or run on one kernel" in error


def test_input_in_a_function_on_another_kernel_than_0_says_whose_the_input_is(tmp_path):
    code = """
        from kernel import Dataflow, run
        flow = Dataflow("asks")
        flow.from_iterable(range(4)).map(lambda x: (x, input())).collect()
        run(flow, cores=2)
    """
    done = _python(tmp_path, code, b"a\nb\nc\nd\n")
    assert done.returncode == 1
    error = done.stderr.decode()
    assert "kernel 1 failed" in error and "raised StandardInputError" in error, error
    assert "kernel 1 read the standard input" in error


def caught_on_kernels_but_0(x):
    """(At module level: kernel 1 runs it.) Kernel 0's stdin here is pytest's, which refuses too."""
    from kernel import StandardInputError

    if type(sys.stdin).__name__ != "Elsewhere":
        return ("read", x)
    try:
        sys.stdin.readline()
    except StandardInputError:
        return ("refused", x)
    return ("read", x)


def test_the_refusal_is_a_standard_input_error_a_function_can_catch():
    """`StandardInputError` is exported from `kernel`: a function that can do
    without the standard input catches the refusal where it is raised."""
    flow = Dataflow("asks")
    out = flow.from_iterable(range(40)).map(caught_on_kernels_but_0).collect()
    run(flow, cores=2)
    assert sorted(x for _, x in out.items) == list(range(40))
    assert {what for what, _ in out.items} == {"read", "refused"}


def _opened_with_a_writer_thread(kind: str, tmp_path, data: bytes):
    """A FIFO or a pipe open for reading, and the thread writing `data` into
    it (more than a pipe holds: it is still writing as the kernels fork).
    "fifo read-write": the writer opened the FIFO O_RDWR, as one does so
    that its open does not wait for a reader."""
    if kind == "fifo":
        fifo = tmp_path / "numbers.fifo"
        os.mkfifo(fifo)
        writer = threading.Thread(target=lambda: fifo.write_bytes(data))
        writer.start()
        return open(fifo), writer
    if kind == "fifo read-write":
        fifo = tmp_path / "numbers.fifo"
        os.mkfifo(fifo)
        write = os.open(fifo, os.O_RDWR)
        read = os.open(fifo, os.O_RDONLY)
    else:
        read, write = os.pipe()

    def feed():
        with os.fdopen(write, "wb") as out:
            out.write(data)

    writer = threading.Thread(target=feed)
    writer.start()
    return os.fdopen(read), writer


@pytest.mark.parametrize("kind", ["fifo", "pipe", "fifo read-write"])
async def test_a_stream_a_thread_of_the_caller_writes_is_read_once_by_kernel_0_to_its_end(tmp_path, kind):
    """A FIFO or a pipe can be read whole by one process only: a FIFO was
    refused with the regular file's reason (a shared read position). And
    the kernels, forked as a thread of the caller wrote it, each held a copy
    of its write end: kernel 0 never saw the end, and the run hung (CI's
    run ended at its time limit on this test, where the writer had not
    closed its end yet as the kernels forked). A writer's descriptor opened
    O_RDWR was kept too, until a review found it (one kernel ends)."""
    total = 100_000  # ~590 KB: the writer is still writing as the kernels fork
    opened, writer = _opened_with_a_writer_thread(kind, tmp_path, _numbers(total))
    try:
        with opened as numbers:
            flow = Dataflow("fifo")
            out = flow.from_iterable(numbers).map(int).collect()
            await asyncio.wait_for(run_async(flow, cores=2), 60)
    finally:
        writer.join()
    assert sorted(out.items) == list(range(1, total + 1))


async def test_a_socket_the_application_opened_before_run_async_is_refused_saying_why():
    """run_async's kernels let go of the application's stream sockets as they
    start (a connection it closes must end): a source reading one read an
    unconnected placeholder and failed with "[Errno 22] Invalid argument",
    saying nothing of why."""
    import socket

    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"1\n2\n3\n")
        theirs.shutdown(socket.SHUT_WR)
        with ours.makefile("r") as lines:
            flow = Dataflow("socket")
            flow.from_iterable(lines).map(int).collect()
            with pytest.raises(Exception) as info:
                await asyncio.wait_for(run_async(flow, cores=2), 60)
    message = str(info.value)
    assert "from_iterable (step 0): its input reads a socket the application opened before run_async()" \
        in message, message
    assert "Invalid argument" not in message, message


def test_a_regular_file_opened_before_the_run_is_still_refused(tmp_path):
    numbers = tmp_path / "numbers.txt"
    numbers.write_bytes(_numbers(10))
    with open(numbers) as opened:
        flow = Dataflow("file")
        flow.from_iterable(opened).collect()
        with pytest.raises(Exception, match="would share its read position"):
            run(flow, cores=2)


@pytest.mark.parametrize("old", [1, 2, 3])
@pytest.mark.parametrize("read_before", [0, 1, 777, 5_000])
def test_a_stream_resumed_on_another_number_of_kernels_goes_on_where_kernel_0_stopped(old, read_before):
    """The sources' positions of a run over the standard input, rescaled:
    kernel 0 read the stream whole (a share of every partition), the other
    kernels' sources ended at once having read nothing (`"ended"`) or not
    yet (a snapshot counting none). The new kernel 0 (of any number) reads
    exactly what the old one had not: with the ended kernels' partitions
    counted as read, a resume from two kernels skipped half of what was
    left, and with their snapshots' none, read it again."""
    from kernel.operators._shares import Share, merge_consumed

    groups, records = 128, list(range(5_000))
    reader = Share(0, 1, groups)
    taken, _ = reader.take_from(iter(records), read_before) if read_before else ([], False)
    assert taken == records[:read_before]
    for others_ended in (True, False):
        snapshots = [reader.snapshot()] + [
            "ended" if others_ended else Share(k, old, groups).snapshot() for k in range(1, old)]
        resumed = Share(0, 1, groups)
        resumed.restore(merge_consumed(snapshots, "ended", groups))
        rest, exhausted = resumed.take_from(iter(records), len(records) + 1)
        assert rest == records[read_before:] and exhausted, (others_ended, len(rest))
