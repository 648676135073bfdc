"""The library's logs follow the logging convention for libraries: a program
that imports the kernel prints none of them unless it configures logging
(a NullHandler on the logger `kernel`), and `python -m kernel.run`, a
program, prints its warnings on stderr (tests/kernel/test_cli.py checks the
cores warning), once, even when the pipeline configures logging itself.

Each case is a subprocess allowed one CPU and asked for two kernels, which
makes the kernel warn (more kernels than CPUs)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from _procs import without_stall_reports

REPO = Path(__file__).resolve().parents[2]
WARNING = ("cores=2, but this process may use only 1 CPU (os.sched_getaffinity): the kernels will "
           "share CPUs, and run slower than with cores=1")


def on_one_cpu(*command: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    cpu = min(os.sched_getaffinity(0))
    return subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True, timeout=60,
                          preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))


def test_a_program_that_imports_the_kernel_prints_none_of_its_logs():
    program = textwrap.dedent("""\
        import logging
        from kernel import Dataflow, run

        flow = Dataflow()
        out = flow.from_iterable(range(4)).collect()
        run(flow, cores=2)                    # warns: more kernels than CPUs
        assert sorted(out.items) == [0, 1, 2, 3]
        for name in ("kernel", "kernel.state", "kernel.links"):
            logging.getLogger(name).error("from %s", name)
        print("done")
        """)
    proc = on_one_cpu("-c", program)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("done\n", "")


def test_a_program_that_configures_logging_gets_the_kernels_warnings():
    program = textwrap.dedent("""\
        import logging
        import sys
        from kernel import Dataflow, run

        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stdout)
        flow = Dataflow()
        flow.from_iterable(range(4)).collect()
        run(flow, cores=2)
        logging.getLogger("kernel.state").warning("below kernel")
        """)
    proc = on_one_cpu("-c", program)
    assert proc.returncode == 0, proc.stderr
    # (two kernels on one CPU may also report a stall: a warning of theirs too, but not the one tested)
    assert without_stall_reports(proc.stdout, "WARNING kernel: ").splitlines() == [
        f"WARNING kernel: {WARNING}", "WARNING kernel.state: below kernel"]
    assert proc.stderr == ""


def test_the_cli_prints_warnings_once_when_the_pipeline_configures_logging(tmp_path):
    """The CLI shows the warnings as Python's last-resort handler does: only
    while nothing else would, so a pipeline's own handler gets each once.
    (A second run over a finished state_dir warns after the pipeline file
    is imported, so after it configured logging.)"""
    pipeline = tmp_path / "pipeline.py"
    pipeline.write_text(textwrap.dedent("""\
        import logging
        from kernel import Dataflow

        logging.basicConfig(format="pipeline's log: %(message)s")
        flow = Dataflow()
        flow.from_iterable(range(3)).print()
        """))
    state = tmp_path / "st"
    first = subprocess.run([sys.executable, "-m", "kernel.run", str(pipeline), "--state-dir", str(state)],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    # (a loaded machine may make a kernel report a stall: through the pipeline's handler)
    assert (first.returncode, first.stdout, without_stall_reports(first.stderr, "pipeline's log: ")) == (
        0, "0\n1\n2\n", "")
    again = subprocess.run([sys.executable, "-m", "kernel.run", str(pipeline), "--state-dir", str(state)],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (again.returncode, again.stdout) == (0, ""), again.stderr
    # once: through the pipeline's handler, not also the CLI's
    line, = without_stall_reports(again.stderr, "pipeline's log: ").splitlines()
    assert line.startswith(f"pipeline's log: state_dir {state}: this flow already ran to the end (epoch ")
