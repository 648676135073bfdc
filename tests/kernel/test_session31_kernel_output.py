"""What a kernel process printed reaches its stdout before the launcher
hears its answer. A kernel flushes what `print()` buffered as it leaves
(it leaves by `os._exit`, which flushes nothing); the launcher, once every
kernel has answered, kills those not yet gone. A kernel that answered
before flushing could be killed with its last lines still in its buffer:
a `sink(print)` on two kernels, its stdout a pipe, lost them.

The test makes the flush slow (a stream whose flush takes a while before
it writes), so a launcher that stops a kernel between its answer and its
flush loses that kernel's lines every time."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from kernel import Dataflow, KernelError, run

pytestmark = pytest.mark.usefixtures("no_leaks")

SLOW_FLUSH = 0.1  # seconds a flush takes before it writes


class _SlowToFlush:
    """A text stream holding what is written until `flush`, which takes
    SLOW_FLUSH, then writes it all to `fd` (inherited by the kernels)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.held: list[str] = []

    def write(self, text: str) -> int:
        self.held.append(text)
        return len(text)

    def flush(self) -> None:
        if self.held:
            time.sleep(SLOW_FLUSH)
            os.write(self.fd, "".join(self.held).encode())
            self.held.clear()


def _lines_printed_by_kernels(tmp_path, monkeypatch, flow, cores: int = 2):
    path = tmp_path / "stdout.txt"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    error = None
    try:
        monkeypatch.setattr(sys, "stdout", _SlowToFlush(fd))
        try:
            run(flow, cores=cores)
        except KernelError as exc:
            error = exc
        monkeypatch.undo()
    finally:
        os.close(fd)
    return path.read_text().splitlines(), error


def test_a_kernels_printed_lines_are_all_written_though_its_flush_is_slow(tmp_path, monkeypatch):
    flow = Dataflow("printing")
    flow.from_iterable(range(200)).sink(print)
    lines, error = _lines_printed_by_kernels(tmp_path, monkeypatch, flow)
    assert error is None
    assert sorted(map(int, lines)) == list(range(200))


def _fails_at_150(n: int) -> int:
    if n == 150:
        raise ValueError("bad record")
    return n


def test_what_a_failing_kernel_printed_before_its_error_is_written(tmp_path, monkeypatch):
    """The kernel that fails: the lines it printed before the error are
    out before the launcher hears of it (and stops every kernel)."""
    flow = Dataflow("printing then failing")
    flow.from_iterable(range(200), batch_size=10).map(_fails_at_150).sink(print)
    lines, error = _lines_printed_by_kernels(tmp_path, monkeypatch, flow, cores=1 + 1)
    assert error is not None and "bad record" in str(error)
    printed = set(map(int, lines))
    # record 150 is kernel 0's (i % 2); its batches of 10 records before 150's
    # were printed before it failed
    assert {n for n in range(0, 140, 2)} <= printed


PRINTING = """\
import sys
from kernel import Dataflow, run

flow = Dataflow("printing")
flow.from_iterable(range({n})).sink(lambda n: print(f"line {{n:08d}} " + "x" * 40))
run(flow, cores={cores})
"""


@pytest.mark.parametrize("into, unbuffered", [("file", True), ("pipe", True), ("file", False)])
def test_lines_printed_on_two_kernels_into_one_file_or_pipe_are_never_torn(tmp_path, into, unbuffered):
    """`sink(print)` on two kernels, the script's stdout a file (`> out`)
    or a pipe (`| reader`), which the kernels share. Unbuffered
    (PYTHONUNBUFFERED=1, as most containers' images set it, or `python
    -u`), each kernel wrote the pieces of a `print()` one by one, the text
    and its newline apart, and the other kernel's lines went in between
    (~16,000 of these 20,000 lines torn into a file, ~8,000 into a pipe).
    Each kernel's stdout is line-buffered now: a line is one write, whole.
    Block-buffered (the default into a file), the lines must come out as
    whole, and all of them, too."""
    n = 20_000
    script = tmp_path / "printing.py"
    script.write_text(PRINTING.format(n=n, cores=2))
    expected = [f"line {i:08d} " + "x" * 40 for i in range(n)]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, str(script)]
    if into == "file":
        out = tmp_path / "out.txt"
        with open(out, "wb") as f:
            proc = subprocess.run(command, stdout=f, stderr=subprocess.PIPE, env=env, timeout=120)
        text = out.read_text()
    else:
        proc = subprocess.run(command, capture_output=True, env=env, timeout=120)
        text = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr.decode()
    lines = text.splitlines()
    whole = set(expected)
    torn = [line for line in lines if line not in whole]
    assert not torn, f"{len(torn)} torn lines, the first: {torn[:3]}"
    assert sorted(lines) == expected


# -- files a flow's steps write to, opened before the run ---------------------------------


def _line(n: int) -> str:
    return f"record {n:08d} " + "y" * 40 + "\n"


def test_a_file_opened_before_a_run_on_two_kernels_gets_every_line_whole_once(tmp_path):
    """A sink writing to a file opened before `run(flow, cores=2)`: each
    kernel wrote into its own copy of the file's buffer and left without
    flushing it (`os._exit`): of 1,000 lines none reached the file. Now the
    launcher flushes the file before the kernels fork (its header, written
    before the run, is there once, not once per kernel), each kernel writes
    it line by line (no line torn by the other's) and flushes it before it
    answers; the caller's footer comes after every kernel's line."""
    path = tmp_path / "out.txt"
    n = 20_000
    with open(path, "w") as f:
        f.write("header\n")  # still in the caller's buffer when the kernels fork
        flow = Dataflow("to a file of the caller's")
        flow.from_iterable(range(n)).sink(lambda record: f.write(_line(record)))
        run(flow, cores=2)
        f.write("footer\n")
    lines = path.read_text().splitlines(keepends=True)
    assert lines[0] == "header\n" and lines[-1] == "footer\n"
    body = lines[1:-1]
    whole = {_line(i) for i in range(n)}
    torn = [line for line in body if line not in whole]
    assert not torn, f"{len(torn)} torn lines, the first: {torn[:3]}"
    assert sorted(body) == sorted(whole)


class _Report:
    def __init__(self, stream) -> None:
        self.stream = stream

    def add(self, record) -> None:
        self.stream.write(f"{record}\n")


_GLOBAL_FILE = None


def _to_the_global_file(record) -> None:
    _GLOBAL_FILE.write(f"{record}\n")


@pytest.mark.parametrize("how", ["bound write", "default argument", "an object's method", "a global",
                                 "csv writer", "binary"])
def test_the_file_is_found_however_the_function_reaches_it(tmp_path, monkeypatch, how):
    path = tmp_path / "out.txt"
    f = open(path, "wb" if how == "binary" else "w", newline="" if how == "csv writer" else None)
    try:
        if how == "bound write":
            fn = f.write
            records = [f"{i}\n" for i in range(500)]
        elif how == "default argument":
            def fn(record, out=f):
                out.write(f"{record}\n")
            records = list(range(500))
        elif how == "an object's method":
            fn = _Report(f).add
            records = list(range(500))
        elif how == "a global":
            monkeypatch.setattr(sys.modules[__name__], "_GLOBAL_FILE", f)
            fn = _to_the_global_file
            records = list(range(500))
        elif how == "csv writer":
            import csv

            fn = csv.writer(f).writerow
            records = [[i] for i in range(500)]
        else:
            def fn(record):
                f.write(b"%d\n" % record)
            records = list(range(500))
        flow = Dataflow("to a file")
        flow.from_iterable(records).sink(fn)
        run(flow, cores=2)
    finally:
        f.close()
    assert sorted(map(int, path.read_text().split())) == list(range(500))


def test_a_flush_that_fails_at_the_end_of_a_kernels_run_fails_the_run_naming_the_file():
    """A binary file on a full disk (/dev/full): the kernels' writes stayed
    in their buffers, and the flush at the end fails: the run fails, naming
    the file, where it used to end well with every byte lost."""
    with open("/dev/full", "wb") as f:
        flow = Dataflow("to a full disk")
        flow.from_iterable(range(100)).sink(lambda record: f.write(b"%d\n" % record))
        with pytest.raises(KernelError) as raised:
            run(flow, cores=2)
    message = str(raised.value)
    assert "could not write out what the flow's steps wrote to the file '/dev/full'" in message, message
    assert "No space left on device" in message, message


def test_a_text_file_on_a_full_disk_fails_at_the_first_line_naming_the_step_and_the_record():
    """A text file that is no regular file (here a device) is written a
    line at a time in a kernel: the first line's write fails, in the
    step's function, named as any error of it is."""
    with open("/dev/full", "w") as f:
        flow = Dataflow("to a full disk")
        flow.from_iterable(range(100)).sink(lambda record: f.write(f"{record}\n"))
        with pytest.raises(KernelError) as raised:
            run(flow, cores=2)
    message = str(raised.value)
    assert "sink(<lambda>)" in message and "No space left on device" in message, message


APPENDING = """\
from kernel import Dataflow

out = open({path!r}, "a")  # each kernel's own, opened as the kernel imports this file
flow = Dataflow("appending")
flow.from_iterable(range(1000)).sink(lambda record: out.write(f"{{record}}\\n"))
"""


def test_a_file_a_pipeline_module_opens_gets_every_kernels_lines_under_the_command(tmp_path):
    """`python -m kernel.run --cores 2`: each kernel imports the pipeline
    and opens the file itself (for appending), and flushes it when its run
    ends (it used to leave with the lines in its buffer: none written)."""
    out = tmp_path / "out.txt"
    script = tmp_path / "appending.py"
    script.write_text(APPENDING.format(path=str(out)))
    proc = subprocess.run([sys.executable, "-m", "kernel.run", str(script), "--cores", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(map(int, out.read_text().split())) == list(range(1000))


class _Hostile:
    """An object whose attributes all raise, even `__class__`."""

    def __getattribute__(self, name):
        raise RuntimeError(f"no {name} here")


def test_a_step_holding_an_object_whose_attributes_raise_runs_as_before():
    hostile = _Hostile()

    def keep(record, _held=hostile):
        return record

    flow = Dataflow("hostile")
    out = flow.from_iterable(range(10)).map(keep).collect()
    run(flow, cores=2)
    assert sorted(out.items) == list(range(10))
