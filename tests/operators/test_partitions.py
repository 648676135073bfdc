"""`from_partitions`: every kernel makes and reads its own share, lazily,
with event time, named errors, and recovery by offset."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import textwrap
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelError, KernelProcessError, Operator, OperatorError, VirtualClock, run
from operators import Tumbling
from tests._crash_runs import assert_each_once

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("_crash_runs", REPO / "tests" / "_crash_runs.py")
_crash_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_crash_runs)


class ByKernel(Operator):
    """Tags every record with the kernel that read it."""

    def on_batch(self, port, batch):
        index = self.context.index
        self.emit([(index, record) for record in batch])


class Sizes(Operator):
    """Passes records on and notes every batch's length."""

    def __init__(self, sizes: list) -> None:
        self.sizes = sizes

    def on_batch(self, port, batch):
        self.sizes.append(len(batch))
        self.emit(batch)


# Brute force: how each way of splitting deals `data` to kernel `index` of `peers`.
def strided(data, index, peers):
    return [data[i] for i in range(len(data)) if i % peers == index]


def contiguous(data, index, peers):
    return [data[i] for i in range(len(data)) if i * peers // max(len(data), 1) == index]


# The makes under test: a list slice (the sequence path) and a generator over
# a contiguous range (the iterator path).
def make_strided(data):
    return lambda index, peers: data[index::peers]


def make_contiguous(data):
    def share(index, peers):
        n = len(data)
        first = next((i for i in range(n) if i * peers // n >= index), n)
        return (data[i] for i in range(first, n) if i * peers // n == index)

    return share


SPLITS = {"strided": (make_strided, strided), "contiguous": (make_contiguous, contiguous)}


@settings(max_examples=12, deadline=None)
@given(
    data=st.lists(st.integers(-1000, 1000), max_size=80),
    cores=st.sampled_from([1, 2, 3]),
    split=st.sampled_from(sorted(SPLITS)),
    batch_size=st.integers(1, 20),
)
def test_shares_are_disjoint_and_complete(data, cores, split, batch_size):
    make, brute_force = SPLITS[split]
    flow = Dataflow()
    out = flow.from_partitions(make(data), batch_size=batch_size).apply(ByKernel).collect()
    run(flow, cores=cores)
    for index in range(cores):  # each kernel read exactly its share, in order
        assert [r for k, r in out.items if k == index] == brute_force(data, index, cores)
    assert sorted(r for _, r in out.items) == sorted(data)


@pytest.mark.parametrize("cores", [1, 3])
def test_make_is_called_once_per_kernel_with_its_index_and_peers(tmp_path, cores):
    calls = tmp_path / "calls"

    def make(index, peers):
        with open(calls, "a") as f:  # one short append per call: whole lines
            f.write(f"{index} {peers} {os.getpid()}\n")
        return range(index, 30, peers)

    flow = Dataflow()
    out = flow.from_partitions(make).collect()
    run(flow, cores=cores)
    lines = [line.split() for line in calls.read_text().splitlines()]
    assert sorted((int(i), int(p)) for i, p, _ in lines) == [(i, cores) for i in range(cores)]
    if cores > 1:
        assert len({pid for _, _, pid in lines}) == cores  # in the kernels, not the caller
    assert sorted(out.items) == list(range(30))


def test_a_share_is_read_in_batches_as_it_goes():
    made = []

    def endless(index, peers):
        for n in itertools.count():
            made.append(n)
            yield n

    class StopAfter(Operator):
        def open(self, context):
            self.seen = 0

        def on_batch(self, port, batch):
            # what the share had made when this batch arrived: this batch, and
            # at most one more batch read ahead (a tick polls the source once)
            assert len(made) <= self.seen + 2 * len(batch)
            self.seen += len(batch)
            if self.seen >= 1000:
                raise RuntimeError("enough")

    sizes: list = []
    flow = Dataflow()
    flow.from_partitions(endless, batch_size=64).apply(lambda: Sizes(sizes)).apply(StopAfter, name="stop")
    with pytest.raises(OperatorError, match="enough") as info:
        run(flow, clock=VirtualClock())  # the chain costs nothing: batches grow to batch_size
    assert info.value.operator.startswith("stop")
    assert sizes[:16] == [16, 32] + [64] * 14  # one batch per poll, from 16 records up to batch_size
    assert len(made) <= 1024 + 2 * 64  # an endless share: nothing made ahead


def test_shares_of_any_length_end_with_a_short_or_no_last_batch():
    lengths = {0: 0, 1: 5, 2: 8}  # kernel -> its share's length (none, short, two full batches)
    flow = Dataflow()
    share = flow.from_partitions(lambda index, peers: iter(range(lengths[index])), batch_size=4)
    out = share.apply(ByKernel).collect()
    run(flow, cores=3)
    assert out.items == [(1, n) for n in range(5)] + [(2, n) for n in range(8)]


@pytest.mark.parametrize("cores", [1, 2])
def test_event_time_windows_over_partitions_equal_brute_force(cores):
    events = [(f"k{n % 3}", n * 0.37 % 20, n) for n in range(300)]  # (key, time, value)

    def make(index, peers):  # each kernel's share in time order, as a partition would be
        return sorted(events[index::peers], key=lambda e: e[1])

    flow = Dataflow()
    source = flow.from_partitions(make, timestamp=lambda e: e[1], batch_size=16)
    sums = source.key_by(lambda e: e[0]).map_values(lambda e: e[2]).window(Tumbling(5.0)).sum()
    out = sums.collect()
    run(flow, cores=cores)
    expected = Counter()
    for key, t, value in events:
        expected[key, (t // 5) * 5.0] += value
    assert {(k, w.start): total for k, w, total in out.items} == dict(expected)
    assert len(out.items) == len(expected)
    assert sums.late_count.value == 0


# -- errors ----------------------------------------------------------------------


def test_make_that_raises_names_the_step_and_make():
    def open_partition(index, peers):
        raise FileNotFoundError(f"no partition {index}")

    flow = Dataflow()
    flow.from_partitions(open_partition, name="orders").collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.operator.startswith("orders")
    assert "open_partition" in info.value.function
    assert "no partition 0" in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_a_share_that_raises_names_the_step_and_the_generator():
    def rows(index, peers):
        yield from range(10)
        raise ValueError(f"corrupt row on kernel {index}")

    flow = Dataflow()
    flow.from_partitions(rows, batch_size=4).collect()
    with pytest.raises(KernelProcessError) as info:
        run(flow, cores=2)
    cause = info.value.__cause__
    assert isinstance(cause, OperatorError)
    assert cause.operator.startswith("from_partitions")
    assert "rows" in cause.function
    assert "corrupt row on kernel" in str(cause)


@pytest.mark.parametrize("returned, says", [(42, "not iterable"), (None, "not iterable")])
def test_make_that_returns_no_iterable_says_so(returned, says):
    flow = Dataflow()
    flow.from_partitions(lambda index, peers: returned).collect()
    with pytest.raises(OperatorError, match=says) as info:
        run(flow)
    assert info.value.operator.startswith("from_partitions")


def test_make_that_returns_an_async_iterable_points_to_from_async_iterable():
    async def agen():
        yield 1

    flow = Dataflow()
    flow.from_partitions(lambda index, peers: agen()).collect()
    with pytest.raises(OperatorError, match="from_async_iterable"):
        run(flow)


def test_make_must_be_callable():
    with pytest.raises(TypeError, match="make\\(index, peers\\)"):
        Dataflow().from_partitions([1, 2, 3])


# -- recovery ----------------------------------------------------------------------

N = 2000
RECOVERY = textwrap.dedent(
    f"""
    import os, time
    from kernel import Dataflow

    # The crashed run's shares go on past {N} (HELD_OPEN: a crash point's
    # run, see tests/_crash_runs.py), records read and dropped, so that the
    # crash comes while every share is being read, however slowly epochs
    # complete (a run of {N} whose shares had ended before it resumes on 3
    # kernels too); the resumed run's end at {N}.
    END = {N} + (100_000 if os.environ.get("HELD_OPEN") else 0)

    def share(index, peers):
        if index == 0:
            return list(range(0, END, peers))         # sliced from the offset
        return (n for n in range(index, END, peers))  # read past the offset

    def slow(n):
        time.sleep(0.0003)  # spread the run over many epochs (and one record per batch)
        return n

    flow = Dataflow("partitions")
    numbers = flow.from_partitions(share, batch_size=25).map(slow).filter(lambda n: n < {N})
    numbers.to_files(os.path.join(os.environ["OUT"], "r"))
    """
)


def test_a_crashed_run_resumes_each_share_at_its_offset(tmp_path):
    (tmp_path / "pipeline.py").write_text(RECOVERY)

    def run_cli(crash, cores=2):
        return _crash_runs.run_cli(tmp_path, cores, crash, OUT=tmp_path / "out")

    # Kernel 1 killed once it has published its 2nd complete epoch, early in
    # a run of ~300 ms (killed in its 250th batch, ~80 ms in, a loaded suite
    # run once had no epoch complete by then), its shares read past N till then
    first = run_cli("committed:2@1")
    assert first.returncode != 0, "the crash point was never reached"
    published = [json.loads(line) for f in (tmp_path / "out" / "r").glob("part-*.jsonl")
                 for line in f.read_text().splitlines()]
    assert published, "no epoch completed before the crash: nothing to resume from"
    elsewhere = run_cli(None, cores=3)  # other shares: refused, naming the kernel count to resume on
    assert elsewhere.returncode != 0
    assert "read make(index, peers) on 2 kernels" in elsewhere.stderr, elsewhere.stderr
    assert "resume it on 2 kernels (--cores 2" in elsewhere.stderr, elsewhere.stderr
    second = run_cli(None)
    assert second.returncode == 0, second.stderr
    records = [json.loads(line) for f in sorted((tmp_path / "out" / "r").glob("part-*.jsonl"))
               for line in f.read_text().splitlines()]
    assert_each_once(records, N)  # every record exactly once: resumed, not replayed


# A set has no order of its own: it iterates by its items' hashes, and str
# hashes differ from one process to the next. A resumed run, in another
# process, read past what the crashed one had handed on by count, so in
# another order: ~500 of these 2,000 records were lost and ~500 doubled.
SET_RECOVERY = textwrap.dedent(
    """
    import os, time
    from kernel import Dataflow

    N = 2000

    def share(index, peers):
        return {f"r{n}" for n in range(index, N, peers)}

    def slow(n):
        time.sleep(0.0003)
        return n

    flow = Dataflow("sets")
    if os.environ["SOURCE"] == "partitions":
        source = flow.from_partitions(share, batch_size=25)
    else:
        source = flow.from_iterable(share(0, 1), batch_size=25)
    source.map(slow).to_files(os.path.join(os.environ["OUT"], "r"))
    """
)


@pytest.mark.parametrize("source", ["partitions", "iterable"])
def test_a_set_read_again_by_a_resumed_run_in_another_process_loses_and_doubles_nothing(tmp_path, source):
    # (held open until the crash: its input lasts ~0.3 s a kernel, which under
    # load may pass before kernel 1 has two epochs committed)
    (tmp_path / "pipeline.py").write_text(SET_RECOVERY + _crash_runs.HELD_OPEN)

    def run_cli(crash, seed):
        return _crash_runs.run_cli(tmp_path, 2, crash, OUT=tmp_path / "out", SOURCE=source,
                                   PYTHONHASHSEED=seed)

    # killed once kernel 1 has published its 2nd complete epoch, as above (not in its
    # 250th batch: under load no epoch may have completed by then)
    first = run_cli("committed:2@1", "1")
    assert first.returncode != 0, "the crash point was never reached"
    published = list((tmp_path / "out" / "r").glob("part-*.jsonl"))
    assert published, "no epoch completed before the crash: nothing to resume from"
    second = run_cli(None, "2")  # another hash seed: the set iterates in another order
    assert second.returncode == 0, second.stderr
    records = [json.loads(line) for f in sorted((tmp_path / "out" / "r").glob("part-*.jsonl"))
               for line in f.read_text().splitlines()]
    assert Counter(records) == Counter(f"r{n}" for n in range(2000))


def test_a_set_whose_items_do_not_sort_is_refused_with_a_state_dir(tmp_path):
    flow = Dataflow()
    flow.from_partitions(lambda i, n: {1, "a"}).collect()
    with pytest.raises(KernelError, match=r"is a set, whose order differs from one process to the next"):
        run(flow, state_dir=tmp_path / "state")
    flow = Dataflow()
    out = flow.from_partitions(lambda i, n: {1, "a"}).collect()
    run(flow)  # without one, read as it comes
    assert sorted(map(str, out.items)) == ["1", "a"]
