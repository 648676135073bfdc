"""Exit handlers in kernel processes (kernel/execution/_child.py): a kernel
leaves by `os._exit`, so a pipeline file's `atexit.register` (each kernel
imports the file under `--cores N`) never ran on several kernels, where it
runs at the command's exit on one; now a kernel runs the handlers
registered in it when its run ends, and never the caller's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

PIPELINE = """
    import atexit, os
    from kernel import Dataflow, current_kernel
    seen = []
    def note(x):
        seen.append(current_kernel().context.index)
        if x == {fail_at}:
            raise ValueError("the record that fails")
        return x
    def summary():
        with open({out!r}, "a") as out:
            out.write(f"{{os.getpid()}}\\t{{sorted(set(seen))}}\\t{{len(seen)}}\\n")
    atexit.register(summary)
    flow = Dataflow("exits")
    flow.from_iterable(range(100)).map(note).sink(lambda x: None)
"""


def _summaries(path) -> list[tuple[int, str, int]]:
    if not os.path.exists(path):
        return []
    with open(path) as lines:
        return [(int(pid), kernels, int(n)) for pid, kernels, n in (line.split("\t") for line in lines)]


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_a_pipeline_files_exit_handler_runs_in_each_kernel_as_its_run_ends(tmp_path, cores):
    out = tmp_path / "summaries.txt"
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(PIPELINE.format(fail_at=-1, out=str(out))))
    done = subprocess.run([sys.executable, "-m", "kernel.run", str(script), "--cores", str(cores)],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    summaries = _summaries(out)
    assert sorted(kernels for _, kernels, _ in summaries) == [f"[{k}]" for k in range(cores)], summaries
    assert sum(n for _, _, n in summaries) == 100
    assert len({pid for pid, _, _ in summaries}) == cores


def test_a_failing_kernel_runs_its_exit_handlers_before_it_answers(tmp_path):
    """Record 7 is kernel 1's (a short list goes record by record, `i %
    N`) and fails it: its handler has run by the time the command ends."""
    out = tmp_path / "summaries.txt"
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(PIPELINE.format(fail_at=7, out=str(out))))
    done = subprocess.run([sys.executable, "-m", "kernel.run", str(script), "--cores", "2"],
                          capture_output=True, timeout=120)
    assert done.returncode == 1 and b"the record that fails" in done.stderr
    assert "[1]" in [kernels for _, kernels, _ in _summaries(out)], _summaries(out)


def test_the_callers_exit_handlers_run_once_in_the_caller_and_a_kernels_own_in_that_kernel(tmp_path):
    """`run(flow, cores=2)`: a handler the caller registered before the run
    runs once, at the caller's exit, in the caller (not in either kernel);
    one that a step's function registers in each kernel runs there as the
    kernel's run ends, before `run` returns."""
    out = tmp_path / "exits.txt"
    code = f"""
        import atexit, os
        from kernel import Dataflow, current_kernel, run
        def note(what):
            with open({str(out)!r}, "a") as exits:
                exits.write(what + "\\n")
        atexit.register(note, "caller")
        registered = []
        def register_once(x):
            if not registered:
                registered.append(x)
                atexit.register(note, f"kernel {{current_kernel().context.index}}")
            return x
        flow = Dataflow("exits")
        flow.from_iterable(range(10)).map(register_once).sink(lambda x: None)
        run(flow, cores=2)
        with open({str(out)!r}) as exits:
            print(sorted(exits.read().split("\\n")[:-1]))
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().strip() == "['kernel 0', 'kernel 1']"  # when run returned
    with open(out) as exits:
        assert sorted(exits.read().split("\n")[:-1]) == ["caller", "kernel 0", "kernel 1"]


def test_a_failing_kernel_does_not_wait_for_a_thread_that_never_ends(tmp_path):
    """A step starts a thread (not a daemon) that waits for ever, then
    fails: the run fails at once, as on one kernel (the caller gets the
    error; its interpreter would wait at its exit), instead of the kernel
    waiting for the thread before it answers, and the run with it, for
    good. Its exit handler still runs."""
    out = tmp_path / "exits.txt"
    code = f"""
        import atexit, threading
        from kernel import Dataflow, run
        never = threading.Event()
        def start_then_fail(x):
            threading.Thread(target=never.wait).start()
            atexit.register(lambda: open({str(out)!r}, "a").write("exit handler\\n"))
            raise ValueError("after starting a thread")
        flow = Dataflow("fails")
        flow.from_iterable(range(2)).map(start_then_fail).sink(lambda x: None)
        try:
            run(flow, cores=2)
        except Exception as exc:
            print(type(exc).__name__, "after starting a thread" in str(exc))
        import os
        os._exit(0)  # (this process's own thread would keep it, as at any interpreter's exit)
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, timeout=30)
    assert done.stdout.decode().split() == ["KernelProcessError", "True"], done.stderr.decode()
    assert "exit handler" in out.read_text()
