"""A bounded `from_files` run on several kernels, crashed and resumed over a
log appended to meanwhile: the resumed run reads the crashed run's one
listing, each line of it once. (A kernel whose source had not polled yet
when an epoch came snapshotted no plan: resumed, it planned its share
afresh from a new listing of the grown log, at other bytes than the other
kernels' restored plans, and lines were read twice or not at all.)"""

from __future__ import annotations

import textwrap
from collections import Counter

from _crash_runs import HELD_OPEN, run_cli, visible_lines

LINES = 20_000

# Run 1 (HOLD set): kernel 1's sources are paused from the start, so its file
# source takes every epoch before its first poll; kernel 1 is killed once an
# epoch is complete on every kernel.
PIPELINE = textwrap.dedent(
    """
    import os
    from kernel import Dataflow, Operator

    class HoldsKernel1(Operator):
        def open(self, context):
            if os.environ.get("HOLD") and context.index == 1:
                self.pause_input(True)

        def on_batch(self, port, batch):
            self.emit(batch)

    flow = Dataflow("resumed")
    flow.from_files(os.environ["LOG"]).apply(HoldsKernel1).to_files(os.environ["OUT"])
    """
) + HELD_OPEN


def numbered(first: int, last: int) -> str:
    return "".join(f"line-{n:09d}\n" for n in range(first, last))


def test_a_kernel_not_yet_polled_at_an_epoch_resumes_on_the_crashed_runs_listing(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    log, out = tmp_path / "app.log", tmp_path / "out"
    log.write_text(numbered(0, LINES))
    crashed = run_cli(tmp_path, 2, "committed:1@1", LOG=log, OUT=out, HOLD=1)
    assert "kernel 1 was killed by SIGKILL" in crashed.stderr, crashed.stderr
    with open(log, "a") as appended:
        appended.write(numbered(LINES, 2 * LINES))
    resumed = run_cli(tmp_path, 2, None, LOG=log, OUT=out)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from epoch" in resumed.stderr, resumed.stderr
    counts = Counter(visible_lines(out))
    read = sorted(int(text[len("line-"):]) for text in counts)
    twice = sum(count - 1 for count in counts.values())
    missing = LINES - sum(1 for n in read if n < LINES)
    past = sum(1 for n in read if n >= LINES)
    assert (missing, twice, past) == (0, 0, 0), (
        f"of the {LINES} lines listed, {missing} were not read and {twice} read twice; "
        f"{past} appended after the listing were read")
