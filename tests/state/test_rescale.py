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
import numbers
import random
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel.operators._shares import ALL, Share, merge_consumed
from test_recovery import (
    PIPELINE,
    assert_exactly_once,
    files_up_to,
    newest_complete,
    read_by,
    run_cli,
)

from kernel.dataflow._key_groups import default_key_groups, owner_table, range_of
from kernel.dataflow._operator import merge_keyed_states
from tests._crash_runs import HELD_OPEN


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
        # (one kernel: a snapshot's crash leaves the epochs before it complete; several:
        # once an epoch is complete, which the last kernel's 3rd snapshot did not ensure under load)
        crash = None if last else "snapshot:3" if cores == 1 else f"committed:2@{cores - 1}"
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


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 1500), groups=st.sampled_from([4, 8, 128]), old=st.integers(1, 6),
       new=st.integers(1, 6), iterator=st.booleans(), run=st.sampled_from([1, 1, 2, 3, 7, 64]),
       seed=st.integers(0, 2**32 - 1))
def test_source_partitions_move_to_any_kernel_count_exactly(n, groups, old, new, iterator, run, seed):
    """Old kernels each read a random prefix of their share (some to the
    end, as ended sources), a list's by runs of `run` records; the new
    kernels, given the merged positions, read exactly the records no old
    kernel had, each share in order."""
    old, new = min(old, groups), min(new, groups)
    run = 1 if iterator else run
    rng = random.Random(seed)
    data = list(range(n))
    snapshots, consumed = [], set()
    for k in range(old):
        share = Share(k, old, groups, run)
        got, ended = read(share, data, iterator, rng, most=50, limit=rng.randint(0, n))
        mine = [x for x in data if (x // run % groups) % old == k]  # the brute-force share
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
        share.restore(merged)
        out, _ = read(share, data, iterator, rng, most=300, limit=n + 1)
        assert out == sorted(out)
        everything += out
    assert sorted(everything) == sorted(set(data) - consumed)


def read(share: Share, data: list, iterator: bool, rng, most: int, limit: int) -> tuple[list, bool]:
    """Batches of 1 to `most` records of `share` until `limit` or the end:
    (records, ended). No batch is larger than asked: also right after a
    restore (a resumed run's first batch took the rest of a block of up to
    `groups` records, whatever the batch_size, and events were late or not
    by other watermarks than in the run it resumed)."""
    got, ended, it = [], False, iter(data)
    while len(got) < limit and not ended:
        size = rng.randint(1, most)
        if iterator:
            batch, ended = share.take_from(it, size)
        else:
            batch = share.take(data, size)
            ended = share.next >= len(data)
        assert len(batch) <= size
        got += batch
    return got, ended


@pytest.mark.parametrize("first, stride", [(0, 1), (1, 2)])
def test_an_iterator_ragged_to_its_end_is_read_in_chunks(monkeypatch, first, stride):
    """A run rescaled past a kernel whose source had ended: that kernel's
    partitions are read to the end, the others part way, so every block of
    the input is ragged. take_from read it one record at a time there
    (one islice and one `_unconsumed` call a record: ~10x slower); it reads
    chunks of up to `size` records of its share, no batch larger."""
    groups, n, size = 8, 4000, 50
    consumed = {g: (ALL if g % 4 == 3 else g) for g in range(groups)}  # kernel 3 of 4 had ended
    share = Share(first, stride, groups)
    share.restore({"consumed": consumed})
    calls = []
    unconsumed = Share._unconsumed
    monkeypatch.setattr(Share, "_unconsumed", lambda self, *a: calls.append(1) or unconsumed(self, *a))
    got, batches, it = [], 0, iter(range(n))
    while True:
        batch, ended = share.take_from(it, size)
        assert len(batch) <= size
        got += batch
        batches += 1
        if ended:
            break
    # the brute-force reference: this share's partitions, past what was consumed of each
    assert got == [x for x in range(n) if (x % groups) % stride == first
                   and x // groups >= consumed[x % groups]]
    assert len(calls) <= 2 * (n // groups + batches)  # chunks by block and batch, not a call a record


def test_key_groups_are_contiguous_ranges_and_keyed_state_is_cut_by_them():
    for kernels in (1, 2, 3, 7, 85, 86, 200):
        groups = default_key_groups(kernels)
        assert groups >= max(128, kernels * 3 // 2) and groups & (groups - 1) == 0
        table = owner_table(kernels, groups)  # by key_group(key, groups)
        for k in range(kernels):
            assert [g for g in range(groups) if table[g] == k] == list(range_of(k, kernels, groups))
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
    # (held open until the crash: its slow records last ~0.2 s a kernel, which
    # under load may pass before kernel 1 has two epochs committed)
    (tmp_path / "pipeline.py").write_text(JOIN + HELD_OPEN)
    assert run_cli(tmp_path, 2, "committed:2@1", n=2000).returncode != 0, "the crash point was never reached"
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


# review (issue 16)

def killed_on_two_kernels(flow, state, nth: int) -> None:
    """Run `flow` on 2 kernels with snapshots until kernel 1 kills itself
    once it has published the `nth` complete epoch (KERNEL_CRASH_AT, set for
    the forked kernels; at its nth snapshot, under load none was complete
    at times)."""
    import kernel._faults
    from kernel import KernelProcessError, run

    kernel._faults._SPEC = f"committed:{nth}@1"
    try:
        with pytest.raises(KernelProcessError):
            run(flow, cores=2, state_dir=state, epoch_interval=0.01)
    finally:
        kernel._faults._SPEC = None


def _late_flow():
    """A windowed count (split around the exchange on several kernels: its
    partial halves find the late events) of records some of which are far
    behind the watermark, paced so that the run spans many epochs."""
    import time

    from kernel import Dataflow
    from operators import Tumbling

    def pace(x):  # (slower after the late events: a kernel takes epoch n only once n - 2 is
        if x % 5 == 0:  # complete, so epochs come 10 to 30 ms apart under load, not every 10 ms)
            time.sleep(0.004 if x < 400 else 0.01)
        return x

    flow = Dataflow("review-late")
    source = flow.from_iterable(range(_N_LATE), batch_size=25, timestamp=_late_stamp)
    counts = source.map(pace).key_by(lambda x: x % 3).window(Tumbling(1.0)).count()
    return flow, counts.collect(), counts.late_count


_N_LATE = 1200


def _is_late(x: int) -> bool:  # early in the run, far behind every kernel's watermark by then
    return 200 <= x < 300 and x % 10 == 3


def _late_stamp(x: int) -> float:
    return 0.05 if _is_late(x) else x / 100


def test_late_events_counted_by_partial_halves_survive_a_resume_on_one_kernel(tmp_path):
    """Found in review: on several kernels a windowed count's partial halves
    count the late events; a run resumed on one kernel has no partial halves,
    and dropped their counts (late_count 1 of 10 after 2 -> 1)."""
    from kernel import run

    # long after the late events: at the 20th snapshot, under a heavy load
    # (8 on 2 cores), only 9 epochs were complete once (kernel 0's fsyncs
    # lagging), too few to hold the late counts
    killed_on_two_kernels(_late_flow()[0], tmp_path, 11)
    epoch, _ = newest_complete(tmp_path)
    assert epoch > 10
    flow, counts, late = _late_flow()
    run(flow, cores=1, state_dir=tmp_path, epoch_interval=0.01)
    expected = Counter((x % 3, float(x // 100)) for x in range(_N_LATE) if not _is_late(x))
    assert Counter({(key, window.start): n for key, window, n in counts.items}) - Counter() <= expected
    assert late.value == sum(map(_is_late, range(_N_LATE))) == 10


def _sums_by_second_flow(out):
    """A keyed operator of our own that sums values per key and second of
    event time, with one data-less timer per second per kernel
    (`schedule(end)`) that flushes every key's sum for that second."""
    import math
    import time

    from kernel import Dataflow, Operator, TimedBatch
    from state import map_state

    class SumsBySecond(Operator):
        def open(self, context):
            self.acc = map_state(self, "acc")  # key -> {end: sum}
            self.scheduled = set()  # the ends this kernel has a timer for

        def restore(self, snapshot):
            super().restore(snapshot)
            self.scheduled = {end for ends in self.acc.values() for end in ends}

        def on_batch(self, port, batch):
            for (key, value), stamp in zip(batch, batch.timestamps):
                end = math.floor(stamp) + 1.0
                mine = self.acc.entry(key)
                mine[end] = mine.get(end, 0) + value
                if end not in self.scheduled:
                    self.scheduled.add(end)
                    self.schedule(end)

        def on_timer(self, when, data):
            self.scheduled.discard(when)
            out = []
            for key in list(self.acc):
                mine = self.acc[key]
                if when in mine:
                    out.append((key, when, mine.pop(when)))
                if not mine:
                    del self.acc[key]
            self.emit(TimedBatch(out, [when] * len(out)))

    def pace(x):  # (slower after the late events: a kernel takes epoch n only once n - 2 is
        if x % 5 == 0:  # complete, so epochs come 10 to 30 ms apart under load, not every 10 ms)
            time.sleep(0.004 if x < 400 else 0.01)
        return x

    flow = Dataflow("review-timers")
    numbers = flow.from_iterable(range(_N_TIMERS), batch_size=25, timestamp=lambda x: x / 100).map(pace)
    numbers.key_by(lambda x: x % 6).apply(SumsBySecond, name="sums").to_files(out)
    return flow


_N_TIMERS = 1500


def test_timers_without_data_reach_every_kernel_of_a_rescaled_run(tmp_path):
    """Found in review: a data-less timer (`schedule(t)`, the operator's
    flush of every key due at t) went to the one kernel owning the key None,
    so on 2 -> 3 the windows open at the restored epoch were never emitted
    on the other kernels (7 sums of 120 missing). Every kernel now gets one
    per time, and the files hold every sum once, as a plain loop's."""
    import json
    import math

    from kernel import run

    out, state = tmp_path / "out", tmp_path / "state"
    killed_on_two_kernels(_sums_by_second_flow(out), state, 5)
    assert newest_complete(state)[0] > 0
    run(_sums_by_second_flow(out), cores=3, state_dir=state, epoch_interval=0.01)
    got = Counter(tuple(json.loads(line)) for path in out.glob("part-*")
                  for line in path.read_text().splitlines())
    sums = Counter()
    for x in range(_N_TIMERS):
        sums[(x % 6, math.floor(x / 100) + 1.0)] += x
    assert got == Counter({(key, end, total): 1 for (key, end), total in sums.items()})
    assert not list(out.glob(".part-*"))


def _totals_flow():
    """A count per kernel of a stream without key_by, in keyed state under
    one constant key: each kernel counts its own share."""
    import time

    from kernel import Dataflow, Operator
    from state import value_state

    class Total(Operator):
        def open(self, context):
            self.n = value_state(self, "n")

        def on_batch(self, port, batch):
            self.n["total"] = self.n.get("total", 0) + len(batch)

        def on_end(self):
            self.emit([self.n.get("total", 0)])

    def pace(x):  # (slower after the late events: a kernel takes epoch n only once n - 2 is
        if x % 5 == 0:  # complete, so epochs come 10 to 30 ms apart under load, not every 10 ms)
            time.sleep(0.004 if x < 400 else 0.01)
        return x

    flow = Dataflow("review-totals")
    totals = flow.from_iterable(range(1000), batch_size=25).map(pace).apply(Total, name="total").collect()
    return flow, totals


def test_keyed_state_of_a_stream_without_key_by_is_refused_a_rescaled_resume(tmp_path):
    """Found in review: the same key on two old kernels (state not
    partitioned by key) was merged by dict.update, the last kernel's value
    winning: on 2 -> 1 a per-kernel count lost the other's share silently
    (1850 of 2000). Now refused, naming the step and the state; the same
    state_dir then resumes on 2 kernels, exact."""
    from kernel import KernelError, run

    killed_on_two_kernels(_totals_flow()[0], tmp_path, 3)
    assert newest_complete(tmp_path)[0] > 0
    with pytest.raises(KernelError, match=r"total.*keyed state 'n' has the key 'total' on kernels 0 and 1 "
                                          r".*not partitioned by key"):
        run(_totals_flow()[0], cores=1, state_dir=tmp_path, epoch_interval=0.01)
    flow, totals = _totals_flow()
    run(flow, cores=2, state_dir=tmp_path, epoch_interval=0.01)
    assert sum(totals.items) == 1000 and len(totals.items) == 2


async def test_a_redis_stream_whose_end_was_not_taken_leaves_the_other_streams_their_ends():
    """Found in review: a bounded Redis read snapshotted before one kernel's
    reader had taken its stream's end (`ends` None there) made a rescaled
    run take every stream's end anew, so entries added after the first run
    began were read on every stream (6 extra entries on 3 -> 2 -> 1). Now
    only that kernel's streams take their ends when the resumed reader starts."""
    import importlib.util
    from pathlib import Path

    import redis
    from kernel.operators._redis import RedisStreamSource, _connect

    path = Path(__file__).resolve().parents[1] / "_redis_server.py"
    spec = importlib.util.spec_from_file_location("_redis_server", path)
    server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(server)

    class Context:
        index, peers = 0, 1

    with server.redis_server() as url:
        writer = redis.Redis.from_url(url, decode_responses=True)
        first = {name: [writer.xadd(name, {"n": n}) for n in range(3)] for name in "abc"}
        later = {name: writer.xadd(name, {"n": "later"}) for name in "abc"}  # after the first run began
        writer.close()
        source = RedisStreamSource(url, ["a", "b", "c"])
        source.open(Context())
        old = [{"positions": {"a": first["a"][0]}, "ends": {"a": first["a"][-1]}, "done": []},
               {"positions": {"b": "0"}, "ends": None, "done": []},  # its reader had not started
               {"positions": {"c": first["c"][1]}, "ends": {"c": first["c"][-1]}, "done": []}]
        source.restore(source.rescale(old, None))
        client = _connect(url, 5.0, True, 0.0)
        try:
            await source._resolve_start(client)
        finally:
            await client.aclose()
    assert source._ends == {"a": first["a"][-1], "b": later["b"], "c": first["c"][-1]}
    assert source._positions == {"a": first["a"][0], "b": "0", "c": first["c"][1]}


class _Stop(BaseException):
    """A user's own control-flow exception, outside the Exception hierarchy."""


class _Tag(numbers.Number):
    """Timer data that is no key: a number whose `==` raises `exc` (so its
    stable hash does, `net._exchange._other_hash`); it pickles as it is."""

    def __init__(self, n: int, exc: BaseException | None) -> None:
        self.n, self.exc = n, exc

    def __eq__(self, other):
        raise self.exc

    __hash__ = object.__hash__


def _tagged_timers_flow(out, exc: BaseException):
    """One timer per record, `schedule(end of its second, _Tag(record))`:
    each emits its record when it fires."""
    import math
    import time

    from kernel import Dataflow, Operator, TimedBatch

    class Tagged(Operator):
        def on_batch(self, port, batch):
            for (_key, value), stamp in zip(batch, batch.timestamps):
                self.schedule(math.floor(stamp) + 1.0, _Tag(value, exc))

        def on_timer(self, when, data):
            self.emit(TimedBatch([data.n], [when]))

    def pace(x):
        if x % 5 == 0:
            time.sleep(0.004)
        return x

    flow = Dataflow("review-tagged-timers")
    numbers_ = flow.from_iterable(range(_N_TIMERS), batch_size=25, timestamp=lambda x: x / 100).map(pace)
    numbers_.key_by(lambda x: x % 6).apply(Tagged, name="tagged").to_files(out)
    return flow


@pytest.mark.parametrize("exc", [_Stop("not a key"), ValueError("not a key")], ids=["Stop", "ValueError"])
def test_timer_data_whose_hash_raises_anything_goes_to_kernel_0_of_a_rescaled_run(tmp_path, exc):
    """Timer data that is no key goes to kernel 0 on 2 -> 3, whatever its
    own `==` raises. Only an Exception was caught there: a `class
    Stop(BaseException)` ended the resumed run with "kernel 0 failed: Stop:
    not a key", naming no step nor record. Every timer fires once."""
    from kernel import run

    out, state = tmp_path / "out", tmp_path / "state"
    killed_on_two_kernels(_tagged_timers_flow(out, exc), state, 5)
    assert newest_complete(state)[0] > 0
    run(_tagged_timers_flow(out, exc), cores=3, state_dir=state, epoch_interval=0.01)
    got = Counter(json.loads(line) for path in out.glob("part-*") for line in path.read_text().splitlines())
    assert got == Counter(range(_N_TIMERS))


def test_a_ctrl_c_in_timer_data_hash_passes_as_itself():
    """A KeyboardInterrupt is a Ctrl-C wherever it lands: never taken for a
    sign that timer data is no key."""
    from kernel.runtime._rescale import _timer_is_mine

    def owns(key):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _timer_is_mine(_Tag(1, None), owns, 0)
    assert _timer_is_mine(_Tag(1, _Stop()), lambda key: key == key, 0) is True
    assert _timer_is_mine(_Tag(1, _Stop()), lambda key: key == key, 1) is False
