"""Rescale on resume: a run killed (SIGKILL) on one number of kernels and
resumed on another, more than once, leaves visible files that hold every
record exactly once, and aggregates and windows equal to a plain loop's
(test_recovery's pipeline and checks: a keyed sum split around the exchange,
a windowed count, every record to files, from a list and an async input).

Keyed state moves between kernels by key group, source positions by the
sources' partitions (`operators/_shares.py`, whose cutting is checked
against a brute-force model here too), the file sink's epochs and hidden
files by kernel 0 taking over those of kernels the run no longer has."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel.operators._shares import Share, merge_consumed
from test_recovery import (
    PIPELINE,
    assert_exactly_once,
    files_up_to,
    newest_complete,
    read_by,
    run_cli,
)

from kernel.dataflow._key_groups import default_key_groups, group_of, owner_table, range_of
from kernel.dataflow._operator import merge_keyed_states


@pytest.mark.parametrize("kernels, source", [((2, 3, 1), "iterable"), ((2, 3, 1), "async"),
                                             ((1, 2), "iterable")])
def test_a_run_resumed_on_other_kernel_counts_after_crashes_is_exact(tmp_path, kernels, source):
    """Each run but the last is killed on its last kernel after its third
    snapshot; the next resumes on the next kernel count from the newest
    complete epoch, which the files of epochs up to it keep (same inode,
    same bytes), and its source reads only what those files do not hold."""
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    before = None
    for step, cores in enumerate(kernels):
        last = step == len(kernels) - 1
        crash = None if last else f"snapshot:3@{cores - 1}"
        name = "resumed" if last else f"run{step}"
        epoch, finished = newest_complete(tmp_path / "state")
        kept = files_up_to(tmp_path / "out" / "records", epoch)
        result = run_cli(tmp_path, cores, crash, source, run=name)
        if crash:
            assert result.returncode != 0, "the crash point was never reached"
        else:
            assert result.returncode == 0, result.stderr
        if before is not None and epoch:
            assert (f"epoch {epoch} was written by {before} kernel{'s' if before > 1 else ''}; this run "
                    f"has {cores}") in result.stderr
            assert files_up_to(tmp_path / "out" / "records", epoch) == kept
        before = cores
    held = sum(len(data.splitlines()) for _, data in kept.values())
    assert epoch and not finished, "the last resume restored nothing"
    assert read_by(tmp_path / "out", "resumed") == 3000 - held
    assert_exactly_once(tmp_path / "out")


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 1500), groups=st.sampled_from([4, 8, 128]), old=st.integers(1, 6),
       new=st.integers(1, 6), iterator=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_source_partitions_move_to_any_kernel_count_exactly(n, groups, old, new, iterator, seed):
    """Old kernels each read a random prefix of their share (some to the
    end, as ended sources); the new kernels, given the merged positions,
    read exactly the records no old kernel had, each share in order."""
    old, new = min(old, groups), min(new, groups)
    rng = random.Random(seed)
    data = list(range(n))
    snapshots, consumed = [], set()
    for k in range(old):
        share = Share(k, old, groups)
        got, ended = read(share, data, iterator, rng, most=50, limit=rng.randint(0, n))
        mine = [x for x in data if (x % groups) % old == k]  # the brute-force share
        assert got == mine[:len(got)]
        if ended and rng.random() < 0.3:
            snapshots.append("ended")
            consumed.update(mine)
            continue
        snapshots.append(share.snapshot())
        consumed.update(got)
    merged = merge_consumed(snapshots, "ended", groups)
    everything = []
    for k in range(new):
        share = Share(k, new, groups)
        share.restore({"consumed": merged})
        out, _ = read(share, data, iterator, rng, most=300, limit=n + 1)
        assert out == sorted(out)
        everything += out
    assert sorted(everything) == sorted(set(data) - consumed)


def read(share: Share, data: list, iterator: bool, rng, most: int, limit: int) -> tuple[list, bool]:
    """Batches of 1 to `most` records of `share` until `limit` or the end:
    (records, ended)."""
    got, ended, it = [], False, iter(data)
    while len(got) < limit and not ended:
        if iterator:
            batch, ended = share.take_from(it, rng.randint(1, most))
        else:
            batch = share.take(data, rng.randint(1, most))
            ended = share.next >= len(data)
        got += batch
    return got, ended


def test_key_groups_are_contiguous_ranges_and_keyed_state_is_cut_by_them():
    for kernels in (1, 2, 3, 7, 85, 86, 200):
        groups = default_key_groups(kernels)
        assert groups >= max(128, kernels * 3 // 2) and groups & (groups - 1) == 0
        table = owner_table(kernels, groups)  # by stable_hash(key) % groups
        assert sorted(group_of(r, groups) for r in range(groups)) == list(range(groups))
        for k in range(kernels):
            assert sorted(group_of(r, groups) for r in range(groups) if table[r] == k) == list(
                range_of(k, kernels, groups))
        if kernels & (kernels - 1) == 0:  # small int keys: round robin, up to the kernels' order
            assert sorted(table[:kernels]) == list(range(kernels))
            assert table[kernels:2 * kernels] == table[:kernels]
    old = [{"windows": {3: {"a": 1, "b": 2}}, "plain": {"a": 5}}, "ended",
           {"windows": {3: {"c": 3}, 4: {"a": 9}}, "plain": {"c": 7}}]
    mine = {"a", "c"}.__contains__
    assert merge_keyed_states(old, mine, nested=("windows",)) == {
        "windows": {3: {"a": 1, "c": 3}, 4: {"a": 9}}, "plain": {"a": 5, "c": 7}}
    pairs = [{"seen": {0: {("a", 1), ("b", 1)}}}, {"seen": {0: {("c", 2)}}}]
    assert merge_keyed_states(pairs, mine, nested=("seen",)) == {"seen": {0: {("a", 1), ("c", 2)}}}


def test_a_flow_with_loops_is_not_rescaled(tmp_path):
    """A loop's round state is kept per kernel, not by key: its state_dir
    resumes on as many kernels as wrote it, and another count is refused
    before anything runs, saying why."""
    from kernel import Dataflow, run
    from state import StateError

    def halving():
        flow = Dataflow("halving")

        def halve(numbers):
            halved = numbers.filter(lambda n: n > 1).map(lambda n: n // 2)
            return halved, halved

        return flow, flow.from_iterable([8, 3]).iterate(halve).collect()

    flow, out = halving()
    run(flow, cores=2, state_dir=tmp_path)
    assert sorted(out.items) == [1, 1, 2, 4]
    with pytest.raises(StateError, match=r"written by 2 kernels and this run has 1: a flow with loops"):
        run(halving()[0], cores=1, state_dir=tmp_path)
    run(halving()[0], cores=2, state_dir=tmp_path)  # as many kernels: the finished run is found


JOIN = """
import os, time
from kernel import Dataflow

N = int(os.environ["N"])
OUT = os.environ["OUT"]

def slow(x):
    if x % 20 == 0:
        time.sleep(0.004)  # spread the run over many epochs
    return x

flow = Dataflow("rescaled-join")
left = flow.from_iterable(range(20)).key_by(lambda x: x % 4)  # ends at once, on every kernel
right = flow.from_iterable(range(N), batch_size=25).map(slow).key_by(lambda x: x % 4)
left.join(right).to_files(os.path.join(OUT, "pairs"))
"""


def test_a_step_that_had_ended_everywhere_stays_ended_and_its_channels_closed(tmp_path):
    """The join's left input had ended on every kernel before the crash:
    resumed on 3 kernels it is restored ended, every kernel counts its
    channels from the other kernels as closed (else the run would wait
    for their end for ever), and the pairs are each written once."""
    (tmp_path / "pipeline.py").write_text(JOIN)
    assert run_cli(tmp_path, 2, "snapshot:3@1", n=2000).returncode != 0
    epoch, _ = newest_complete(tmp_path / "state")
    assert epoch
    resumed = run_cli(tmp_path, 3, None, run="resumed", n=2000)
    assert resumed.returncode == 0, resumed.stderr
    assert "was written by 2 kernels; this run has 3" in resumed.stderr
    pairs = visible(tmp_path / "out" / "pairs")  # [key, [left, right]]
    expected = [[right % 4, [left, right]] for right in range(2000) for left in range(20)
                if left % 4 == right % 4]
    assert Counter(map(json.dumps, pairs)) == Counter(map(json.dumps, expected))


def visible(directory: Path) -> list:
    return [json.loads(line) for path in sorted(directory.glob("part-*.jsonl"))
            for line in path.read_text().splitlines()]
