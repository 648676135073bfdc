"""Review of how a bounded input is dealt out between kernels and resumed
(`operators/_shares.py`, `from_iterable`, `from_partitions`): each test here
failed when written. The contract: every record of the input handed on
exactly once across all kernels, also after a crash and a resume on any
number of kernels, and an error that says so where that cannot be kept."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelProcessError, run
from kernel.dataflow._errors import KernelError, OperatorError
from tests._crash_runs import assert_each_once

_spec = importlib.util.spec_from_file_location(
    "_crash_runs", Path(__file__).resolve().parents[1] / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)


def lines(folder: Path) -> list:
    return [json.loads(line) for path in sorted(folder.glob("part-*.jsonl"))
            for line in path.read_text().splitlines()]


# -- an iterator over a file object the kernels inherit by fork -------------------------


@pytest.mark.parametrize("wrap", ["generator", "map", "csv.reader"])
def test_an_iterator_over_a_file_opened_before_the_run_is_read_whole_or_refused(tmp_path, wrap):
    """A file object opened before `run(flow, cores=2)` is refused (the
    forked kernels share its read position), but the same file object
    wrapped in the most common iterators, `(l for l in f)`, `map(str.strip,
    f)`, `csv.reader(f)`, is not: each kernel reads the chunks the other
    did not, keeps its share of those, and half the lines are lost (and a
    line cut at a chunk's edge comes as two pieces), without a word.
    Should: every line exactly once, or the refusal the bare file gets."""
    path = tmp_path / "lines.txt"
    n = 20_000
    path.write_text("".join(f"{i}\n" for i in range(n)))
    f = open(path)
    try:
        data = {"generator": (line.strip() for line in f), "map": map(str.strip, f),
                "csv.reader": (row[0] for row in csv.reader(f))}[wrap]
        flow = Dataflow()
        out = flow.from_iterable(data).collect()
        try:
            run(flow, cores=2)
        except (KernelProcessError, KernelError, OperatorError) as exc:
            assert "file object" in str(exc)  # refused, as the bare file object is
            return
        assert Counter(out.items) == Counter(str(i) for i in range(n))
    finally:
        f.close()


# -- a set whose items sort only partially -------------------------------------------------

FSET_PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    N = int(os.environ["N"])

    def slow(x):
        if x % 30 == 0:
            time.sleep(0.003)  # spread the run over many epochs
        return x

    # 0..N-1 as a set of frozensets of str: their order in a set differs from
    # one process (PYTHONHASHSEED) to the next, and `<` between them is
    # "is a subset of", which sorts nothing
    data = {frozenset({f"a{i}", f"b{i % 7}"}) for i in range(N)}
    flow = Dataflow("frozensets")
    numbers = flow.from_iterable(data, batch_size=10).map(lambda s: int(min(s)[1:])).map(slow)
    numbers.to_files(os.path.join(os.environ["OUT"], "records"))
    """
)


def test_a_set_of_frozensets_of_str_resumes_in_the_same_order(tmp_path):
    """`in_a_fixed_order` sorts a set so that a resumed run (another process,
    another PYTHONHASHSEED) deals it out in the order the crashed run did.
    `sorted` of frozensets does not raise but does not order them either
    (`<` is the subset relation: a partial order), so the order still
    follows the set's hash order: resumed with another hash seed, ~700 of
    3,000 records were lost and as many written twice. Should: every
    record once (or a KernelError, as for items that do not sort). Such a
    set is now refused as the run starts, before any epoch (so before the
    crash point): the refusal is what is checked, on both runs."""
    (tmp_path / "pipeline.py").write_text(FSET_PIPELINE)
    n = 3000
    first = _crash_runs.run_cli(tmp_path, 2, "committed:2@1", N=n, OUT=tmp_path / "out", PYTHONHASHSEED=1)
    assert first.returncode != 0, "the crash point was never reached"
    refusal = "its items do not sort (their order is partial"
    if refusal in first.stderr:  # (refused at the start: no epoch, nothing to resume)
        second = _crash_runs.run_cli(tmp_path, 2, None, N=n, OUT=tmp_path / "out", PYTHONHASHSEED=2)
        assert second.returncode == 1 and refusal in second.stderr, second.stderr
        return
    second = _crash_runs.run_cli(tmp_path, 2, None, N=n, OUT=tmp_path / "out", PYTHONHASHSEED=2)
    assert second.returncode == 0, second.stderr
    assert "resuming from epoch" in second.stderr
    assert_each_once(lines(tmp_path / "out" / "records"), n)


# -- a resumed run whose input grew --------------------------------------------------------

GROW_PIPELINE = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    N = int(os.environ["N"])

    def slow(x):
        if x % 2 == 0:  # kernel 0's records (2 kernels, 128 partitions): it ends long after kernel 1
            time.sleep(0.005)
        return x

    flow = Dataflow("grown")
    numbers = flow.from_iterable(list(range(N)), batch_size=1).map(slow)
    numbers.to_files(os.path.join(os.environ["OUT"], "records"))
    """
)


def test_a_resumed_run_whose_list_grew_reads_every_new_record_or_refuses(tmp_path):
    """Crashed on 2 kernels once kernel 1 had read its share of 400 records to
    the end (and kernel 0 had not), resumed on 2 kernels with the list grown
    to 800: kernel 0 reads its new records (402, 404, ...), kernel 1 is
    restored as ended and the odd ones, 401..799, are never read, without a
    word (the same on 3 kernels: kernel 1's partitions are marked read to
    their end). Should: every record of the new input once, or a clear
    error that the input is not the one the state_dir's run read."""
    (tmp_path / "pipeline.py").write_text(GROW_PIPELINE)
    out = tmp_path / "out"

    def kernel_1_ended_kernel_0_not(snapshots):
        return len(snapshots) == 2 and snapshots[1].get(0) == "ended" and snapshots[0].get(0) != "ended"

    _crash_runs.run_cli_until(tmp_path, 2, kernel_1_ended_kernel_0_not, N=400, OUT=out)
    second = _crash_runs.run_cli(tmp_path, 2, None, N=800, OUT=out)
    if second.returncode != 0:
        assert "input" in second.stderr and "resuming" not in second.stderr.splitlines()[-1], second.stderr
        return
    assert "resuming from epoch" in second.stderr
    assert_each_once(lines(out / "records"), 800)


# -- one iterator in two flows -------------------------------------------------------------


def test_a_generator_read_by_one_flow_is_refused_to_another():
    """A run of a flow over an iterator marks it read, and a second run of
    that flow is refused ("an iterator can be read only once: this run would
    silently get nothing"). A second flow over the same generator is not:
    on one kernel (where the run reads the caller's generator itself) it
    silently gets no record. Should: the same refusal (or the records)."""
    numbers = (x for x in range(10))
    first = Dataflow()
    got = first.from_iterable(numbers).collect()
    run(first)
    assert got.items == list(range(10))
    second = Dataflow()
    again = second.from_iterable(numbers).collect()
    try:
        run(second)
    except (KernelError, OperatorError) as exc:
        assert "read only once" in str(exc)
        return
    assert again.items == list(range(10)), "the second flow silently read nothing"


# -- a range longer than sys.maxsize -------------------------------------------------------


@pytest.mark.parametrize("cores", [1, 2])
def test_a_range_longer_than_sys_maxsize_is_read(cores):
    """`from_iterable(range(2**64))` (a counter without end, as a sliceable
    range) fails as the run starts with "IterableSource.open raised
    OverflowError: Python int too large to convert to C ssize_t": `len()` of
    the range, for its run length. A range that long slices fine. Should:
    read it (here, until the map stops the run), or refuse it when the flow
    is built, saying why."""
    class Enough(Exception):
        pass

    def stop_at_5(x):
        if x >= 5:
            raise Enough
        return x

    flow = Dataflow()
    flow.from_iterable(range(sys.maxsize * 4), batch_size=5).map(stop_at_5).collect()
    with pytest.raises(Exception) as info:
        run(flow, cores=cores)
    assert "Enough" in str(info.value) or isinstance(info.value, Enough), str(info.value)
    assert "OverflowError" not in str(info.value)


# -- a snapshot by runs, resumed from an iterator -------------------------------------------


def test_an_iterator_share_restored_from_a_snapshot_by_runs_reads_by_those_runs():
    """A list of 40,000 records on 2 kernels is dealt out by runs of 78
    (`sequence_run`), and its snapshot says so (`"run": 78`). Resumed with
    the same records from an iterator (the pipeline now reads them from a
    generator, say), `Share.restore` takes the run length, but `take_from`
    ignores it and deals record by record: 56 records were never read and
    33 read twice. Should: read the iterator by the snapshot's runs (or
    refuse it, saying the input changed)."""
    from kernel.operators._shares import Share, sequence_run

    n, groups = 40_000, 128
    run_length = sequence_run(n, 2, groups)
    assert run_length == 78
    data = list(range(n))
    before, snapshots = [], []
    for kernel in range(2):
        share = Share(kernel, 2, groups, run_length)
        before += share.take(data, 5000)
        snapshots.append(share.snapshot())
    after = []
    for kernel in range(2):
        share = Share(kernel, 2, groups)  # an iterator's share, as IterableSource.open makes it
        share.restore(snapshots[kernel])
        records, ended = iter(data), False
        while not ended:
            batch, ended = share.take_from(records, 1000)
            after += batch
    assert Counter(before + after) == Counter(data)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3000), st.sampled_from([1, 2, 3, 4]), st.sampled_from([1, 2, 3, 4]),
       st.sampled_from([4, 8, 16]), st.integers(1, 400), st.integers(1, 300), st.data())
def test_an_iterator_resumed_from_a_sequences_snapshot_by_runs_reads_every_record_once(
        n, peers, new_peers, groups, first_take, size, data):
    """Against the input's multiset: a sequence dealt by runs on `peers`
    kernels, each having taken some of its share, resumed from an iterator
    of the same records on `new_peers` kernels (rescaled: `merge_consumed`),
    some kernels having read their share to the end."""
    from kernel.operators._shares import Share, merge_consumed, sequence_run

    run_length = max(2, sequence_run(n, max(peers, 2), groups))
    records = list(range(n))
    before, snapshots = [], []
    ended = object()
    for kernel in range(peers):
        share = Share(kernel, peers, groups, run_length)
        taken = share.take(records, data.draw(st.integers(0, first_take)))
        before += taken
        if share.next >= n and data.draw(st.booleans()):
            snapshots.append(ended)  # read to its end: its source had ended
        else:
            snapshots.append(share.snapshot())
    merged = merge_consumed(snapshots, ended, groups)
    after = []
    for kernel in range(new_peers):
        share = Share(kernel, new_peers, groups)
        share.restore({"consumed": {g: c for g, c in merged["consumed"].items() if g % new_peers == kernel},
                       "run": merged["run"]})
        it, done = iter(records), False
        while not done:
            batch, done = share.take_from(it, size)
            after += batch
    assert Counter(before + after) == Counter(records)
