"""Review of session 32's kernel-process fixes (the standard input, exit
handlers, queued logs): what still broke.

- Kernel 1's stand-in for `sys.stdin` had no `buffer` and no `reconfigure`:
  a pipeline file reading `sys.stdin.buffer` (bytes), or calling
  `sys.stdin.reconfigure(...)` at module level, failed every kernel but 0
  on import.
- A kernel forgot the caller's exit handlers, `weakref.finalize`'s hook
  among them, which is registered once a process: a `TemporaryDirectory` a
  step made in a kernel was left on disk, where one kernel removes it at
  exit.
- `logging.shutdown` is an exit handler too (registered when the caller
  imported logging): a kernel never flushed its own logging handlers, so a
  `MemoryHandler` a pipeline file set up wrote nothing on two kernels.
Each case runs in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

LINES = 5_000


def _numbers(n: int = LINES) -> bytes:
    return "".join(f"{i}\n" for i in range(1, n + 1)).encode()


def _cli(tmp_path, code: str, cores: int, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(code))
    return subprocess.run([sys.executable, "-m", "kernel.run", str(script), "--cores", str(cores)],
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, timeout=120, cwd=tmp_path)


READS_STDIN = {
    "sys.stdin.buffer": """
        import sys
        from kernel import Dataflow
        flow = Dataflow("stdin")
        flow.from_iterable(sys.stdin.buffer).map(int).print()
    """,
    "a TextIOWrapper over sys.stdin.buffer": """
        import io, sys
        from kernel import Dataflow
        flow = Dataflow("stdin")
        flow.from_iterable(io.TextIOWrapper(sys.stdin.buffer, encoding="latin-1")).map(int).print()
    """,
    "sys.stdin.reconfigure": """
        import sys
        from kernel import Dataflow
        sys.stdin.reconfigure(encoding="utf-8", errors="replace")
        flow = Dataflow("stdin")
        flow.from_iterable(sys.stdin).map(int).print()
    """,
}


@pytest.mark.parametrize("how", list(READS_STDIN))
def test_the_standard_input_read_as_bytes_or_reconfigured_is_read_once_on_two_kernels(tmp_path, how):
    done = _cli(tmp_path, READS_STDIN[how], 2, _numbers())
    assert done.returncode == 0, done.stderr.decode()
    assert sorted(map(int, done.stdout.split())) == list(range(1, LINES + 1))


def test_kernel_1s_binary_standard_input_refuses_to_be_read_saying_whose_it_is(tmp_path):
    code = """
        import sys
        from kernel import Dataflow
        def numbers():
            for line in sys.stdin.buffer:
                yield int(line)
        flow = Dataflow("stdin")
        flow.from_iterable(numbers()).print()
    """
    done = _cli(tmp_path, code, 2, _numbers())
    assert done.returncode == 1
    error = done.stderr.decode()
    assert "function 'numbers' raised StandardInputError" in error, error
    assert "kernel 1 read the standard input: on 2 kernels it is kernel 0's alone" in error


MAKES_TEMPORARY_DIRECTORIES = """
    import os, sys, tempfile
    from kernel import Dataflow, current_kernel, run
    caller = tempfile.TemporaryDirectory(dir={tmp!r}, prefix="caller-")
    kept = []
    def step(x):
        if x < 2:  # one or two a kernel, held until the kernel's exit
            kept.append(tempfile.TemporaryDirectory(dir={tmp!r}, prefix="step-"))
        return x
    flow = Dataflow("dirs")
    flow.from_iterable(range(8)).map(step).sink(lambda x: None)
    run(flow, cores={cores})
    print(os.path.isdir(caller.name))
"""


@pytest.mark.parametrize("cores", [1, 2])
def test_a_temporary_directory_a_step_made_in_a_kernel_is_removed_and_the_callers_is_not(tmp_path, cores):
    """On one kernel the step's directories go at the caller's exit; on
    two, at each kernel's (`weakref.finalize`'s exit handler); the caller's
    outlives the run either way."""
    script = tmp_path / "caller.py"
    script.write_text(textwrap.dedent(MAKES_TEMPORARY_DIRECTORIES.format(tmp=str(tmp_path), cores=cores)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["True"]
    left = sorted(name for name in os.listdir(tmp_path) if name.startswith(("step-", "caller-")))
    assert left == []


# a logger "mine" writing to {path} through a MemoryHandler that holds up to 1,000 records
HELD_LOGS = """
    import logging, logging.handlers
    from kernel import Dataflow, run
    target = logging.FileHandler({path!r})
    held = logging.handlers.MemoryHandler(capacity=1000, flushLevel=logging.CRITICAL, target=target)
    log = logging.getLogger("mine")
    log.addHandler(held)
    log.setLevel(logging.INFO)
    log.propagate = False
"""
STEP_LOGS = """
    def step(x):
        log.info("record %d", x)
        return x
    flow = Dataflow("logs")
    flow.from_iterable(range(40)).map(step).sink(lambda x: None)
"""
MEMORY_HANDLER = HELD_LOGS + STEP_LOGS


@pytest.mark.parametrize("cores", [1, 2])
def test_a_pipeline_files_buffering_log_handler_is_flushed_when_each_kernel_ends(tmp_path, cores):
    """As `logging.shutdown` does at an interpreter's exit: every record
    once, on one kernel and on two."""
    path = tmp_path / "records.log"
    done = _cli(tmp_path, MEMORY_HANDLER.format(path=str(path)), cores)
    assert done.returncode == 0, done.stderr.decode()
    written = path.read_text().splitlines() if path.exists() else []
    assert sorted(written) == sorted(f"record {i}" for i in range(40))


CALLERS_MEMORY_HANDLER = HELD_LOGS + """
    log.info("before the run")  # held in the caller's buffer as the kernels fork
""" + STEP_LOGS + """
    run(flow, cores={cores})
    log.info("after the run")
"""


@pytest.mark.parametrize("cores", [1, 2])
def test_the_callers_buffering_log_handler_writes_what_the_kernels_logged_once(tmp_path, cores):
    """The kernels' records through the caller's `MemoryHandler` are
    written when each kernel ends, and what the caller held as they forked
    only by the caller, at its exit: every record once."""
    path = tmp_path / "records.log"
    script = tmp_path / "caller.py"
    script.write_text(textwrap.dedent(CALLERS_MEMORY_HANDLER.format(path=str(path), cores=cores)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr.decode()
    written = path.read_text().splitlines() if path.exists() else []
    expected = ["before the run", "after the run"] + [f"record {i}" for i in range(40)]
    assert sorted(written) == sorted(expected)


def test_an_async_source_over_the_standard_input_on_two_kernels_fails_saying_what_to_do(tmp_path):
    """`loop.connect_read_pipe(..., sys.stdin)` in an async source runs in
    every kernel; kernel 1's has no descriptor. The refusal said only
    that; reading it in kernel 0 alone silently loses half the lines there
    (an async source keeps its share of what it reads), so it says what
    reads it whole."""
    code = """
        import asyncio, sys
        from kernel import Dataflow
        async def lines():
            reader = asyncio.StreamReader()
            await asyncio.get_running_loop().connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            while line := await reader.readline():
                yield int(line)
        flow = Dataflow("stdin")
        flow.from_async_iterable(lines).print()
    """
    done = _cli(tmp_path, code, 2, _numbers(100))
    assert done.returncode == 1
    error = done.stderr.decode()
    assert "function 'lines' raised" in error, error
    assert "kernel 1's sys.stdin has no file descriptor: on 2 kernels the standard input is kernel 0's" \
        in error
    assert "an async source keeps only its share of what it reads" in error
    assert "from_iterable(sys.stdin) reads it in kernel 0, whole" in error


LEAVES_WORK_IN_THREADS = """
    import threading, time
    from concurrent.futures import ThreadPoolExecutor
    from kernel import Dataflow
    pool = ThreadPoolExecutor(2)
    def note(path, x, pause):
        time.sleep(pause)  # still working as the kernel's run ends
        with open(path, "a") as out:
            out.write(f"{{x}}\\n")
    def step(x):
        pool.submit(note, {pooled!r}, x, 0.02)
        if x < 3:
            threading.Thread(target=note, args=({threads!r}, x, 0.1)).start()
        return x
    flow = Dataflow("threads")
    flow.from_iterable(range(12)).map(step).sink(lambda x: None)
"""


@pytest.mark.parametrize("cores", [1, 2])
def test_work_left_to_threads_is_finished_before_each_kernel_exits(tmp_path, cores):
    """At an interpreter's exit Python waits for its threads (not daemon
    ones) and an executor's queued work, then runs the exit handlers; a
    kernel leaving by `os._exit` killed them: on one kernel every line is
    written, and so on two."""
    pooled, threads = tmp_path / "pooled.txt", tmp_path / "threads.txt"
    done = _cli(tmp_path, LEAVES_WORK_IN_THREADS.format(pooled=str(pooled), threads=str(threads)), cores)
    assert done.returncode == 0, done.stderr.decode()
    lines = {path.name: sorted(map(int, path.read_text().split())) if path.exists() else []
             for path in (pooled, threads)}
    assert lines == {"pooled.txt": list(range(12)), "threads.txt": [0, 1, 2]}
