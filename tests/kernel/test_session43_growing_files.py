"""A bounded `from_files` run on several kernels over a log that another
process appends to while the run starts: every kernel cuts the files at
the sizes of one listing, so each line of the listed prefix is read exactly
once, none torn. (Each kernel listed the files itself at its first poll:
the kernels cut the growing log at other bytes, and the lines between the
cuts were read twice or not at all.) On one machine (the kernels share the
first kernel's listing, `python -m kernel.run` too) and in a cluster (its
processes agree on process 0's)."""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from contextlib import contextmanager

import pytest
from _procs import run_cli_processes
from test_cluster import outcomes_of

from kernel import Dataflow, Operator, run

pytestmark = pytest.mark.usefixtures("no_leaks")

FIRST_LINES = 20_000  # in the log before the writer starts: every kernel has a share of it
# Another process appends whole lines (one write a batch), about every half
# millisecond, until the run has ended; and a step of the flow takes its
# kernel's index times 20 ms to open (a connection made at open, say), so
# the kernels start one after another: each listing the files itself saw a
# longer log than the one before it.
WRITER = textwrap.dedent(
    """
    import os, sys, time
    fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)
    n = int(sys.argv[2])
    os.write(1, b"appending\\n")
    while True:
        os.write(fd, b"".join(b"line-%09d\\n" % (n + i) for i in range(20)))
        n += 20
        time.sleep(0.0005)
    """
)


class OpensSlowly(Operator):
    """Passes its records on; takes its kernel's index times 20 ms to open."""

    def open(self, context):
        time.sleep(0.02 * context.index)

    def on_batch(self, port, batch):
        self.emit(batch)


PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow, Operator

    {opens_slowly}
    flow = Dataflow("growing")
    flow.from_files(os.environ["LOG"]).apply(OpensSlowly).print()
    """
).format(opens_slowly=inspect.getsource(OpensSlowly))


WHOLE_LINE = re.compile(r"line-\d{9}")


def line(n: int) -> str:
    return f"line-{n:09d}"


@contextmanager
def growing_log(tmp_path):
    """A log of FIRST_LINES lines, appended to by another process meanwhile;
    yields its path."""
    log = tmp_path / "app.log"
    log.write_text("".join(line(n) + "\n" for n in range(FIRST_LINES)))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(FIRST_LINES)],
                              stdout=subprocess.PIPE)
    try:
        assert writer.stdout.readline() == b"appending\n"
        yield log
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()


def assert_a_prefix_read_once(lines: list[str]) -> None:
    """`lines` are the log's first lines, each once, and whole (the log's
    size in the one listing; the writer writes whole lines only)."""
    counts = Counter(lines)
    torn = [text for text in counts if not WHOLE_LINE.fullmatch(text)]
    numbers = sorted(int(text[len("line-"):]) for text in counts if text not in torn)
    prefix = numbers[-1] + 1 if numbers else 0
    missing = prefix - len(numbers)
    twice = sum(count - 1 for count in counts.values())
    assert (missing, twice, torn) == (0, 0, []), (
        f"of the log's first {prefix} lines, {missing} were not read and {twice} read more than once; "
        f"torn: {torn[:3]}")
    assert prefix >= FIRST_LINES


@pytest.mark.parametrize("cores", [2, 3])
def test_a_log_growing_while_the_kernels_start_is_read_to_one_listings_sizes(tmp_path, cores):
    with growing_log(tmp_path) as log:
        flow = Dataflow("growing")
        out = flow.from_files(log).apply(OpensSlowly).collect()
        run(flow, cores=cores)
    assert_a_prefix_read_once(out.items)


def test_the_command_lines_kernels_each_importing_the_pipeline_share_one_listing(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    with growing_log(tmp_path) as log:
        env = {**os.environ, "LOG": str(log)}
        codes, [(stdout, stderr)] = run_cli_processes([[str(tmp_path / "pipeline.py"), "--cores", "3"]],
                                                      [env])
    assert codes == [0], stderr
    assert_a_prefix_read_once(stdout.splitlines())


@pytest.mark.parametrize("snapshots", [False, True])
def test_a_clusters_processes_read_a_growing_log_at_process_0s_listing(tmp_path, snapshots):
    # (with a state_dir, the listing is agreed on beside the epoch the run starts from)
    def options_for(process):
        return {"state_dir": tmp_path / f"state-{process}"} if snapshots else {}

    with growing_log(tmp_path) as log:

        def build():
            flow = Dataflow("growing")
            return flow, [flow.from_files(log).apply(OpensSlowly).collect()]

        outcomes = outcomes_of(build, 2, cores=2, options_for=options_for)
    assert outcomes[1] == ("ok", [[]]), outcomes[1]
    status, [items] = outcomes[0]
    assert status == "ok", outcomes[0]
    assert_a_prefix_read_once([ast.literal_eval(item) for item in items])  # (the cluster helper's reprs)
