"""Snapshots with a loop whose rounds are tens of thousands of records: the
step after a loop's head takes a round that the budget cannot cover, and
leaves the rest of its inbox for later ticks (`Instance._defer`), with the
kernel's input held meanwhile. A run killed (SIGKILL) at a snapshot, on 1
and 2 kernels, then run again with the same state_dir, publishes what a
crash-free run does, each record once: the loop's results and a state kept
inside the loop across rounds."""

from __future__ import annotations

import importlib.util
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from kernel.runtime._epochs import AHEAD

N, B, R = 160_000, 20_000, 8  # records, source batch (a loop's run), rounds at most

PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    N, B, R = int(os.environ["N"]), int(os.environ["B"]), int(os.environ["R"])
    OUT = os.environ["OUT"]

    read = [0]  # records read on this kernel (a process of its own)

    def slow(i):  # epochs pass while the source reads, on every kernel, and the loop's runs are large
        read[0] += 1
        if read[0] % (B // 2) == 0:
            time.sleep(0.03)
        return i

    def countdown(values):  # (i, rounds left)
        on = values.map(lambda v: (v[0], v[1] - 1))
        done = on.filter(lambda v: v[1] == 0)
        # a state kept inside the loop, across rounds and runs: records done per i % 64
        seen = done.key_by(lambda v: v[0] % 64).map_values(lambda v: 1).stateful_map(
            lambda total, one: ((total or 0) + one, (total or 0) + one))
        return on.filter(lambda v: v[1] > 0), done.map(lambda v: ("done", v[0], 0)).union(
            seen.map(lambda p: ("seen", p[0], p[1])))

    flow = Dataflow("loop-large-rounds")
    numbers = flow.from_iterable(range(N), batch_size=B).map(slow)
    numbers.map(lambda i: (i, 1 + i % R)).iterate(countdown).map(lambda r: r).to_files(
        os.path.join(OUT, "out"))
    """
)

_spec = importlib.util.spec_from_file_location(
    "_crash_runs", Path(__file__).resolve().parents[1] / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)
newest_complete, visible_lines = _crash_runs.newest_complete, _crash_runs.visible_lines


def run_cli(tmp: Path, cores: int, crash: str | None):
    return _crash_runs.run_cli(tmp, cores, crash, N=N, B=B, R=R, OUT=tmp / "out")


def assert_exactly_once(out: Path) -> None:
    records = visible_lines(out / "out")
    done = Counter(i for tag, i, _ in records if tag == "done")
    missing = set(range(N)) - set(done)
    doubled = {i: n for i, n in done.items() if n != 1}
    assert not missing and not doubled and len(done) == N, (
        f"{len(missing)} missing (e.g. {sorted(missing)[:5]}), {len(doubled)} doubled "
        f"(e.g. {sorted(doubled.items())[:5]}), {len(done)} of {N}")
    seen: dict = {}
    for tag, key, total in records:
        if tag == "seen":
            seen.setdefault(key, []).append(total)
    per_key = Counter(i % 64 for i in range(N))
    assert {key: sorted(totals) for key, totals in seen.items()} == {
        key: list(range(1, count + 1)) for key, count in per_key.items()}
    assert len(records) == 2 * N
    assert not list(out.rglob(".part-*"))


# Kernel k's n-th snapshot comes only once epoch n - AHEAD is complete
# everywhere (kernel/runtime/_epochs.py), so the crash leaves an epoch to
# resume from. This ran on one kernel only before: on two, kernel 1 wrote
# its 5th snapshot before any epoch was complete (about 1 run in 5 on a
# quiet machine, every try of three beside a CPU hog). The records have no
# event time, so no run of the loop started before the end of input, and
# every epoch's marker waited at the loop's entries, to go in (and be
# snapshotted, on each kernel) all at once; a new epoch now asks for a run.
# (At kernel 1's 4th snapshot, not every run has come that far on two.)
@pytest.mark.parametrize(("cores", "crash"), [(1, "snapshot:4"), (2, "snapshot:3@1")])
def test_a_crashed_run_with_large_loop_rounds_resumes_and_publishes_every_result_once(
        tmp_path, cores, crash):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    first = run_cli(tmp_path, cores, crash)
    assert first.returncode != 0, "the crash point was never reached"
    epoch = newest_complete(tmp_path / "state")
    assert epoch >= int(crash.split(":")[1].split("@")[0]) - AHEAD, epoch
    second = run_cli(tmp_path, cores, None)
    assert second.returncode == 0, second.stderr
    assert f"resuming from epoch {epoch}\n" in second.stderr, second.stderr[-2000:]
    assert_exactly_once(tmp_path / "out")
