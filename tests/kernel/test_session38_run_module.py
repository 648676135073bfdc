"""Session 38: `kernel.run` is the command line's module and the blocking
run() function; `from kernel.run import run` was an ImportError (the module
was made callable, but held the function under another name)."""

import subprocess
import sys
import textwrap

from _interrupts import ROOT

THREE_WAYS = """
    from kernel.run import run  # the function itself
    import kernel
    import kernel.run
    from kernel import Dataflow
    from kernel._facade import run as blocking_run

    assert run is blocking_run, run
    flow = Dataflow()
    out = flow.from_iterable(range(3)).map(lambda x: x * 10).collect()
    run(flow)
    print(out.items)
    kernel.run(flow)  # the callable module
    print(out.items)
"""

PIPELINE = """
    from kernel import Dataflow

    flow = Dataflow("printed")
    flow.from_iterable(["a", "b"]).map(print)
"""


def test_from_kernel_run_import_run_the_callable_module_and_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(THREE_WAYS)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "[0, 10, 20]\n[0, 10, 20]\n"), done.stderr[-2000:]

    pipeline = tmp_path / "printed.py"
    pipeline.write_text(textwrap.dedent(PIPELINE))
    done = subprocess.run([sys.executable, "-m", "kernel.run", str(pipeline), "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "a\nb\n"), done.stderr[-2000:]
