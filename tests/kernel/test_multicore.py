"""Every operator on 1, 2 and 3 kernels (`run(flow, cores=n)`): exact results
against plain Python, records that need pickle crossing the exchange, the
host loop running while `run_async` waits, and bounded memory when a fast
source feeds a slow consumer on another kernel."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import errno
import mmap
import os
import select
import signal
import socket
import stat
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass
from enum import IntEnum
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelError, Operator, OperatorError, Source, run, run_async
from kernel.execution._cores import RING_BYTES
from kernel.execution._supervisor import KernelProcessError
from net import Partitioner
from operators import Tumbling

pytestmark = pytest.mark.usefixtures("no_leaks")

CORES = [1, 2, 3]
# Each example forks kernel processes: few examples, no deadline. The leak
# check is per test, not per example, which is what the health check is about.
FORKING = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

ints = st.lists(st.integers(-1000, 1000), max_size=120)
batch_sizes = st.sampled_from([1, 3, 7, 64, 1024])


def multiset(items) -> Counter:
    return Counter(map(repr, items))


def same(a, b) -> bool:
    """Equal, with identical types at every level (a tuple is not a list,
    True is not 1)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    return a == b


# -- every operator, one table ----------------------------------------------------

DATA = list(range(-30, 270))


def grouped(pairs) -> dict:
    groups: dict = {}
    for key, value in pairs:
        groups.setdefault(key, []).append(value)
    return groups


KEYED = [(x % 7, x) for x in DATA]

STREAM_CASES = {
    "map": (lambda s: s.map(lambda x: x * x + 1), [x * x + 1 for x in DATA]),
    "filter": (lambda s: s.filter(lambda x: x % 3 == 0), [x for x in DATA if x % 3 == 0]),
    "flat_map": (lambda s: s.flat_map(lambda x: [x] * (x % 4)), [x for x in DATA for _ in range(x % 4)]),
    "inspect": (lambda s: s.inspect(lambda x: x + 1), DATA),
    "key_by": (lambda s: s.key_by(lambda x: x % 7), KEYED),
    "map_values": (lambda s: s.key_by(lambda x: x % 7).map_values(lambda x: -x), [(k, -v) for k, v in KEYED]),
    "union": (lambda s: s.map(lambda x: ("a", x)).union(s.map(lambda x: ("b", x))),
              [("a", x) for x in DATA] + [("b", x) for x in DATA]),
    "union of keyed": (lambda s: s.key_by(lambda x: x % 7).union(s.key_by(lambda x: -x)),
                       KEYED + [(-x, x) for x in DATA]),
}

AGGREGATE_CASES = {
    "count": (lambda k: k.count(), {key: len(v) for key, v in grouped(KEYED).items()}),
    "sum": (lambda k: k.sum(), {key: sum(v) for key, v in grouped(KEYED).items()}),
    "reduce": (lambda k: k.reduce(max), {key: max(v) for key, v in grouped(KEYED).items()}),
    "fold": (lambda k: k.fold(0, lambda acc, v: acc + v * v),
             {key: sum(x * x for x in v) for key, v in grouped(KEYED).items()}),
    "fold with a factory": (lambda k: k.fold(list, lambda acc, v: [*acc, v]).map_values(sorted),
                            {key: sorted(v) for key, v in grouped(KEYED).items()}),
    "map_values then sum": (lambda k: k.map_values(lambda v: v % 5).sum(),
                            {key: sum(x % 5 for x in v) for key, v in grouped(KEYED).items()}),
    "count then map_values": (lambda k: k.count().map_values(lambda n: n * 10),
                              {key: len(v) * 10 for key, v in grouped(KEYED).items()}),
}


@pytest.mark.parametrize("cores", CORES)
@pytest.mark.parametrize("case", list(STREAM_CASES))
def test_stream_operator(case, cores):
    build, expected = STREAM_CASES[case]
    flow = Dataflow()
    out = build(flow.from_iterable(DATA, batch_size=16)).collect()
    run(flow, cores=cores)
    assert len(out.items) == len(expected)
    assert multiset(out.items) == multiset(expected)
    assert all(same(a, b) for a, b in zip(sorted(out.items, key=repr), sorted(expected, key=repr)))


@pytest.mark.parametrize("cores", CORES)
@pytest.mark.parametrize("case", list(AGGREGATE_CASES))
def test_keyed_aggregate(case, cores):
    build, expected = AGGREGATE_CASES[case]
    flow = Dataflow()
    keyed = flow.from_iterable(DATA, batch_size=16).key_by(lambda x: x % 7).map_values(lambda x: x)
    out = build(keyed).collect()
    run(flow, cores=cores)
    # One result per key: every record of a key met on one kernel.
    assert len(out.items) == len(expected)
    assert dict(out.items) == expected


@pytest.mark.parametrize("cores", CORES)
def test_collect_from_several_points_of_one_flow(cores):
    flow = Dataflow()
    source = flow.from_iterable(DATA, batch_size=10)
    raw = source.collect()
    doubled = source.map(lambda x: 2 * x).collect()
    counts = source.key_by(lambda x: x % 2).count().collect()
    run(flow, cores=cores)
    assert sorted(raw.items) == DATA
    assert sorted(doubled.items) == [2 * x for x in DATA]
    assert dict(counts.items) == dict(Counter(x % 2 for x in DATA))


@pytest.mark.parametrize("cores", CORES)
def test_collect_of_a_bounded_source_keeps_each_kernels_share_in_order(cores):
    flow = Dataflow()
    out = flow.from_iterable(DATA, batch_size=9).collect()
    run(flow, cores=cores)
    # Record i is in partition i % 128 (the run's key groups), read by kernel
    # (partition % cores); collect gathers kernel 0's first.
    assert out.items == [x for k in range(cores) for i, x in enumerate(DATA) if i % 128 % cores == k]


@pytest.mark.parametrize("cores", [2, 3])
def test_empty_input_and_more_kernels_than_records(cores):
    flow = Dataflow()
    empty = flow.from_iterable([]).key_by(lambda x: x).count().collect()
    flow2 = Dataflow()
    few = flow2.from_iterable(["only"]).key_by(lambda x: x).count().collect()
    run(flow, cores=cores)
    run(flow2, cores=cores)
    assert empty.items == []
    assert few.items == [("only", 1)]


# -- sinks that run in the kernel processes --------------------------------------


def file_writer(directory):
    """A sink function that appends repr(record) to <directory>/<pid>.txt."""

    def write(record):
        with open(directory / f"{os.getpid()}.txt", "a") as f:
            f.write(repr(record) + "\n")

    return write


def read_back(directory) -> dict[int, list]:
    return {
        int(path.stem): [ast.literal_eval(line) for line in path.read_text().splitlines()]
        for path in directory.glob("*.txt")
    }


@pytest.mark.parametrize("cores", CORES)
def test_sink_runs_in_each_kernel_process(tmp_path, cores):
    flow = Dataflow()
    flow.from_iterable(DATA, batch_size=8).key_by(lambda x: x % 11).sink(file_writer(tmp_path))
    run(flow, cores=cores)
    written = read_back(tmp_path)
    everything = [record for records in written.values() for record in records]
    assert multiset(everything) == multiset((x % 11, x) for x in DATA)
    if cores == 1:
        assert set(written) == {os.getpid()}
    else:
        # One file per kernel process, none of them this one.
        assert len(written) == cores
        assert os.getpid() not in written
        # Each process saw whole keys: no key is written by two kernels.
        owners = {key: pid for pid, records in written.items() for key, _ in records}
        for pid, records in written.items():
            assert {owners[key] for key, _ in records} == {pid}


@pytest.mark.parametrize("cores", CORES)
def test_inspect_sees_every_record_once_and_passes_it_on(tmp_path, cores):
    flow = Dataflow()
    out = flow.from_iterable(DATA, batch_size=5).inspect(file_writer(tmp_path)).map(lambda x: -x).collect()
    run(flow, cores=cores)
    seen = [record for records in read_back(tmp_path).values() for record in records]
    assert sorted(seen) == DATA
    assert sorted(out.items) == sorted(-x for x in DATA)
    assert len(read_back(tmp_path)) == cores


@pytest.mark.parametrize("cores", CORES)
def test_print_writes_every_record_once(capfd, cores):
    capfd.readouterr()
    flow = Dataflow()
    (flow.from_iterable(["alpha beta", "beta", "gamma alpha beta"] * 7, batch_size=2)
         .flat_map(str.split).key_by(lambda w: w).count().print("n="))
    flow.from_iterable(range(10), batch_size=3).print()
    run(flow, cores=cores)
    lines = capfd.readouterr().out.splitlines()
    assert Counter(lines) == Counter(
        ["n=('alpha', 14)", "n=('beta', 21)", "n=('gamma', 7)"] + [str(i) for i in range(10)]
    )


# -- chains, under hypothesis ----------------------------------------------------

words = st.lists(st.text(alphabet="abcAB ", max_size=12), max_size=40)


@FORKING
@given(words, batch_sizes)
def test_word_count_equals_counter(lines, batch_size):
    expected = Counter(w for line in lines for w in line.split())
    for cores in CORES:
        flow = Dataflow()
        out = (flow.from_iterable(lines, batch_size=batch_size)
               .flat_map(str.split).key_by(lambda w: w).count().collect())
        run(flow, cores=cores)
        assert len(out.items) == len(expected), cores
        assert dict(out.items) == expected, cores


@FORKING
@given(st.lists(st.tuples(st.sampled_from(["k1", "k2", "k3", 4, 5, (6, "x")]), st.integers(-99, 99)),
                max_size=100), batch_sizes)
def test_keyed_aggregates_after_map_values(pairs, batch_size):
    groups = grouped(pairs)
    for cores in CORES:
        flow = Dataflow()
        values = (flow.from_iterable(pairs, batch_size=batch_size)
                  .key_by(lambda p: p[0]).map_values(lambda p: p[1]))
        counts, sums = values.count().collect(), values.sum().collect()
        lows = values.reduce(min).collect()
        squares = values.map_values(lambda v: v * v).fold(0, lambda a, v: a + v).collect()
        run(flow, cores=cores)
        assert dict(counts.items) == {k: len(v) for k, v in groups.items()}
        assert dict(sums.items) == {k: sum(v) for k, v in groups.items()}
        assert dict(lows.items) == {k: min(v) for k, v in groups.items()}
        assert dict(squares.items) == {k: sum(x * x for x in v) for k, v in groups.items()}
        assert len(counts.items) == len(sums.items) == len(lows.items) == len(squares.items) == len(groups)


@FORKING
@given(ints, batch_sizes)
def test_stateless_chain(data, batch_size):
    expected = [y for x in data if x % 2 for y in (x, x * 10)]
    for cores in CORES:
        flow = Dataflow()
        out = (flow.from_iterable(data, batch_size=batch_size)
               .filter(lambda x: x % 2).flat_map(lambda x: (x, x * 10)).map(lambda x: x).collect())
        run(flow, cores=cores)
        assert Counter(out.items) == Counter(expected)


@FORKING
@given(words, batch_sizes)
def test_two_exchanges_in_sequence(lines, batch_size):
    """key_by word -> count -> key_by the word's length -> sum of counts."""
    counts = Counter(w for line in lines for w in line.split())
    expected: dict = {}
    for word, n in counts.items():
        expected[len(word)] = expected.get(len(word), 0) + n
    for cores in CORES:
        flow = Dataflow()
        out = (flow.from_iterable(lines, batch_size=batch_size).flat_map(str.split)
               .key_by(lambda w: w).count()
               .key_by(lambda pair: len(pair[0])).map_values(lambda pair: pair[1]).sum()
               .collect())
        run(flow, cores=cores)
        assert len(out.items) == len(expected)
        assert dict(out.items) == expected


@pytest.mark.parametrize("cores", CORES)
def test_three_exchanges_and_a_union_of_keyed_streams(cores):
    data = list(range(500))
    flow = Dataflow()
    src = flow.from_iterable(data, batch_size=17)
    by_mod = src.key_by(lambda x: x % 10).count()  # (r, 50) for r in 0..9
    by_parity = by_mod.key_by(lambda p: p[0] % 2).map_values(lambda p: p[1]).sum()  # (0, 250), (1, 250)
    other = flow.from_iterable(["x", "y", "x"], batch_size=1).key_by(lambda w: w).count()
    total = by_parity.union(other).key_by(lambda p: "all").map_values(lambda p: p[1]).sum().collect()
    run(flow, cores=cores)
    assert total.items == [("all", 503)]


# -- records that need pickle cross the exchange exactly -------------------------


class Point:
    """A user class, defined at module level so that it pickles."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)

    def __hash__(self):
        return hash((self.x, self.y))

    def __repr__(self):
        return f"Point({self.x!r}, {self.y!r})"


@dataclass(frozen=True)
class Tag:
    name: str
    weight: float


RICH_RECORDS = [
    (1, 2),
    [1, 2],
    ("nested", (1, (2, (3,))), [4, (5,)]),
    2**64,
    -(2**70) - 3,
    (2**65, "big in a tuple"),
    Point(1, (2, 3)),
    Tag("t", 0.5),
    {"a": (1, 2), "b": [Point(0, 0)]},
    frozenset({1, 2}),
    Fraction(1, 3),
    b"\x00bytes",
    None,
    True,
    1,
    1.5,
    "text",
    (),
]


@pytest.mark.parametrize("cores", CORES)
def test_records_needing_pickle_arrive_with_exact_types(cores):
    data = RICH_RECORDS * 3
    flow = Dataflow()
    out = (flow.from_iterable(data, batch_size=4)
           .key_by(lambda r: repr(r))  # spreads them over every kernel
           .map_values(lambda r: (r, type(r).__name__))
           .collect())
    run(flow, cores=cores)
    assert len(out.items) == len(data)
    expected = sorted(((repr(r), (r, type(r).__name__)) for r in data), key=repr)
    got = sorted(out.items, key=repr)
    for a, b in zip(got, expected):
        assert same(a, b), (a, b)


class Level(IntEnum):
    LOW = 1


class Word(str):
    pass


scalars = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text(max_size=5),
                    st.binary(max_size=4), st.booleans(), st.none())
# msgpack's lookalikes: an IntEnum is an int, a str subclass a str, a
# namedtuple a tuple, to msgpack; they must come back as what they were
lookalikes = st.sampled_from([Level.LOW, Word("w"), Fraction(1, 2), (Level.LOW, 1), ("w", Word("w"))])
flat_records = st.one_of(scalars, st.tuples(scalars, scalars), st.tuples(scalars, scalars, scalars))


@FORKING
@given(records=st.lists(st.one_of(flat_records, lookalikes), max_size=80)
       | st.lists(flat_records, max_size=80))
def test_collected_records_come_back_exactly_from_kernel_processes(records):
    """What `collect()` gathered in each kernel process comes back encoded
    once per step (msgpack where exact, else pickle): each record exactly,
    types included, whatever mix a kernel holds."""
    flow = Dataflow()
    out = flow.from_iterable(records, batch_size=7).collect()
    run(flow, cores=2)
    assert Counter(map(typed, out.items)) == Counter(map(typed, records))


def typed(record):
    """A record's value with the type of each of its parts (a tuple is not
    a list, True is not 1, an IntEnum is not an int, -0.0 is not 0.0)."""
    if isinstance(record, tuple):
        return (type(record).__name__, tuple(map(typed, record)))
    return (type(record).__name__, repr(record))


def test_a_collected_record_that_cannot_be_pickled_names_its_step_and_the_record():
    flow = Dataflow()
    flow.from_iterable(range(4)).map(lambda i: (i, threading.Lock())).collect(name="locks")
    with pytest.raises(KernelProcessError) as caught:
        run(flow, cores=2)
    message = str(caught.value)
    assert "locks: a record it collected cannot be pickled back to the caller's process" in message
    assert "cannot pickle '_thread.lock' object" in message
    assert "_thread.lock object at" in message  # the record itself


@pytest.mark.parametrize("cores", CORES)
def test_structured_and_big_keys_are_aggregated_exactly(cores):
    keys = [(1, "a"), (1, ("b", 2)), 2**64 + 1, -(2**80), Point(3, 4), Tag("x", 1.0), b"k", None, (), 2.5]
    data = [(k, i) for i, k in enumerate(keys * 4)]
    flow = Dataflow()
    pairs = flow.from_iterable(data, batch_size=3).key_by(lambda p: p[0]).map_values(lambda p: p[1])
    sums = pairs.sum().collect()
    lists = pairs.fold(list, lambda acc, v: [*acc, v]).map_values(tuple).collect()
    run(flow, cores=cores)
    assert len(sums.items) == len(keys)
    assert dict(sums.items) == {k: sum(i for kk, i in data if kk == k) for k in keys}
    for key, values in lists.items:
        assert type(values) is tuple
        assert sorted(values) == [i for kk, i in data if kk == key]
    # The keys themselves came back with their own types.
    assert sorted(map(repr, (k for k, _ in sums.items))) == sorted(map(repr, keys))
    assert all(type(k) in {type(x) for x in keys} for k, _ in sums.items)


@pytest.mark.parametrize("cores", CORES)
def test_tuples_stay_tuples_and_bools_stay_bools(cores):
    data = [("k", (1, 2)), ("k", [1, 2]), ("b", True), ("b", 1), ("n", None), ("f", 1.0)] * 5
    flow = Dataflow()
    out = flow.from_iterable(data, batch_size=2).key_by(lambda p: p[0]).map_values(lambda p: p[1]).collect()
    run(flow, cores=cores)
    got = sorted(out.items, key=repr)
    expected = sorted(data, key=repr)
    assert all(same(a, b) for a, b in zip(got, expected))
    assert Counter(type(v).__name__ for _, v in out.items) == Counter(
        {"tuple": 5, "list": 5, "bool": 5, "int": 5, "NoneType": 5, "float": 5}
    )


@pytest.mark.parametrize("cores", [1, 2])
def test_strings_with_lone_surrogates_cross_the_exchange(cores):
    # os.fsdecode() of a non-UTF-8 file name gives such strings; one core
    # handles them, so several cores must too.
    # Record i is read by kernel i % 2, so each name is read on both kernels
    # and one of them must send it to the other.
    names = ["caf\udce9.txt", "caf\udce9.txt", "ok.txt", "\udcff", "\udcff", "ok.txt"]
    flow = Dataflow()
    out = flow.from_iterable(names, batch_size=1).key_by(lambda n: n).count().collect()
    run(flow, cores=cores)
    assert dict(out.items) == {"caf\udce9.txt": 2, "ok.txt": 2, "\udcff": 2}


# -- run_async: the host loop runs while the kernels do ---------------------------


class AskTheHost(Source):
    """Kernel 0 asks the host (a byte on one pipe) and waits for its answer
    (a byte on another): the run can only end if the host loop ran meanwhile."""

    def __init__(self, ask_fd, answer_fd):
        self.ask_fd, self.answer_fd = ask_fd, answer_fd

    def open(self, context):
        self.deadline = time.monotonic() + 20
        if context.index == 0:
            os.write(self.ask_fd, b"?")

    def poll(self):
        if self.context.index != 0:
            self.emit([f"kernel {self.context.index} done"])
            return False
        try:
            answer = os.read(self.answer_fd, 1)
        except BlockingIOError:
            if time.monotonic() > self.deadline:
                raise TimeoutError("the host loop never answered") from None
            return True
        self.emit([f"host said {answer.decode()}"])
        return False


async def test_run_async_on_two_cores_keeps_the_host_loop_running():
    ask_r, ask_w = os.pipe()
    answer_r, answer_w = os.pipe()
    os.set_blocking(answer_r, False)
    loop = asyncio.get_running_loop()
    asked = loop.create_future()
    ticks = 0

    def on_ask():
        loop.remove_reader(ask_r)
        asked.set_result(os.read(ask_r, 1))

    beat = asyncio.Event()

    async def answer():
        await asked
        for _ in range(3):  # the heartbeat ticks while the kernels wait for us
            beat.clear()
            await beat.wait()
        os.write(answer_w, b"!")

    async def heartbeat():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1
            beat.set()

    try:
        loop.add_reader(ask_r, on_ask)
        flow = Dataflow()
        out = (flow.source(lambda: AskTheHost(ask_w, answer_r), name="ask")
               .key_by(lambda s: s).count().collect())
        beating = asyncio.create_task(heartbeat())
        answering = asyncio.create_task(answer())
        await asyncio.sleep(0)
        ticks_before = ticks
        await asyncio.wait_for(run_async(flow, cores=2), timeout=30)
        ticks_during = ticks - ticks_before
        beating.cancel()
        # Kernel 0 could only finish once the host had answered, which it did
        # after three heartbeats: the loop ran all along.
        assert answering.done() and asked.result() == b"?"
        assert sorted(out.items) == [("host said !", 1), ("kernel 1 done", 1)]
        assert ticks_during >= 3
    finally:
        loop.remove_reader(ask_r)
        for fd in (ask_r, ask_w, answer_r, answer_w):
            os.close(fd)


async def test_run_async_on_three_cores_gives_exact_results():
    flow = Dataflow()
    lines = ["a b", "b c", "c c"] * 20
    out = flow.from_iterable(lines, batch_size=4).flat_map(str.split).key_by(str).count().collect()
    await run_async(flow, cores=3)
    assert dict(out.items) == {"a": 20, "b": 40, "c": 60}


async def test_run_async_on_two_cores_raises_the_kernel_error():
    flow = Dataflow()
    (flow.from_iterable(range(10), batch_size=1)
         .key_by(lambda x: x).map_values(lambda x: 1 // (x - 7)).collect())
    with pytest.raises(KernelProcessError) as info:
        await run_async(flow, cores=2)
    assert info.value.kernel == Partitioner(2).owner(7)
    assert isinstance(info.value.__cause__, OperatorError)
    assert "ZeroDivisionError" in info.value.__cause__.error
    assert info.value.__cause__.record == "(7, 7)"


def test_run_from_a_running_loop_is_refused():
    async def main():
        flow = Dataflow()
        flow.from_iterable([1]).collect()
        with pytest.raises(RuntimeError, match="run_async"):
            run(flow, cores=2)

    asyncio.run(main())


@pytest.mark.parametrize("cores", [0, -1, True, 1.5, "2"])
def test_bad_core_counts(cores):
    flow = Dataflow()
    flow.from_iterable([1]).collect()
    with pytest.raises(ValueError, match="cores must be a positive int"):
        run(flow, cores=cores)


# -- bounded memory: a fast source, a slow consumer on another kernel ------------
#
# Kernel 0's source emits records forever, every one keyed to kernel 1, whose
# consumer is slow. Without flow control kernel 0 would queue frames without
# limit (the overflow behind a full ring). With it, kernel 0's sources wait
# while the ring is full, so the producer can never be more than about a ring
# (plus what the reader has handed over but the consumer not yet handled)
# ahead of the consumer. The consumer checks that lead on every batch through
# counters in an anonymous shared mapping, and stops the run by raising once it
# has handled far more data than the bound.

PAYLOAD = b"x" * 2000
BATCH = 64
RECORDS_TO_CONSUME = 100_000  # 200 MB through the exchange
_SLOTS = struct.Struct("<8q")  # produced, consumed, max lead, pid0, rss0 at open, hwm0, hwm1, rss1 at open
_KEY_ON_KERNEL_1 = next(k for k in range(10) if Partitioner(2).owner(k) == 1)


def _memory_kb(pid="self") -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        return {
            line.split(":")[0]: int(line.split()[1])
            for line in status
            if line.startswith(("VmRSS:", "VmHWM:"))
        }


class Enough(Exception):
    pass


class Forever(Source):
    def __init__(self, shared):
        self.shared = shared

    def open(self, context):
        # One bytes object 64 times: msgpack writes it out in full for every
        # record (pickle would memoize it into a tiny frame).
        self.batch = [PAYLOAD] * BATCH
        if context.index == 0:
            self._set(3, os.getpid())
            self._set(4, _memory_kb()["VmRSS"])

    def _get(self, slot):
        return struct.unpack_from("<q", self.shared, slot * 8)[0]

    def _set(self, slot, value):
        struct.pack_into("<q", self.shared, slot * 8, value)

    def poll(self):
        if self.context.index != 0:
            return False
        self.emit(self.batch)
        self._set(0, self._get(0) + BATCH)
        return True


class SlowConsumer(Operator):
    def __init__(self, shared):
        self.shared = shared

    def open(self, context):
        self.consumed = 0
        self.max_lead = 0
        if context.index == 1:
            struct.pack_into("<q", self.shared, 7 * 8, _memory_kb()["VmRSS"])

    def on_batch(self, port, batch):
        assert self.context.index == 1, "every key belongs to kernel 1"
        self.consumed += len(batch)
        produced = struct.unpack_from("<q", self.shared, 0)[0]
        self.max_lead = max(self.max_lead, produced - self.consumed)
        struct.pack_into("<q", self.shared, 8, self.consumed)
        struct.pack_into("<q", self.shared, 16, self.max_lead)
        spin_until = time.perf_counter() + 0.0005  # CPU work: half a millisecond per batch
        while time.perf_counter() < spin_until:
            pass
        if self.consumed >= RECORDS_TO_CONSUME:
            pid0 = struct.unpack_from("<q", self.shared, 3 * 8)[0]
            struct.pack_into("<q", self.shared, 5 * 8, _memory_kb(pid0)["VmHWM"])
            struct.pack_into("<q", self.shared, 6 * 8, _memory_kb()["VmHWM"])
            raise Enough(f"consumed {self.consumed}, producer at most {self.max_lead} ahead")


def test_a_fast_source_waits_for_a_slow_consumer_on_another_kernel():
    shared = mmap.mmap(-1, _SLOTS.size)  # MAP_SHARED: the forked kernels write here
    try:
        flow = Dataflow()
        (flow.source(lambda: Forever(shared), name="forever")
             .key_by(lambda r: _KEY_ON_KERNEL_1)
             .apply(lambda: SlowConsumer(shared), name="slow consumer")
             .collect())
        # The kernels are forked from this process and start as big as it is
        # (a pytest worker late in the suite: 250 MB and more)
        launcher_rss = _memory_kb()["VmRSS"]
        started = time.monotonic()
        with pytest.raises(KernelProcessError) as info:
            run(flow, cores=2)
        elapsed = time.monotonic() - started
        produced, consumed, max_lead, _pid0, rss0, hwm0, hwm1, rss1 = _SLOTS.unpack_from(shared)
    finally:
        shared.close()

    err = info.value
    assert err.kernel == 1
    cause = err.__cause__
    assert isinstance(cause, OperatorError)
    assert cause.operator.startswith("slow consumer")
    assert cause.error.startswith("Enough: consumed ")
    assert "on_batch" in cause.function
    assert consumed >= RECORDS_TO_CONSUME
    assert elapsed < 30

    record_bytes = len(PAYLOAD)
    ring_records = RING_BYTES // record_bytes
    # The producer pushed far more than one ring...
    assert produced >= RECORDS_TO_CONSUME > 20 * ring_records
    # ...but was never more than a few rings ahead of the consumer: it waited.
    assert max_lead <= 4 * ring_records, (max_lead, ring_records)
    # And memory tells the same story: neither kernel grew by anything like
    # the 200 MB that went through.
    mib = 1024
    assert hwm0 - rss0 < 64 * mib, (hwm0, rss0)
    assert hwm1 - rss1 < 64 * mib, (hwm1, rss1)
    # Nor before their steps opened: bounded by what they inherited, this
    # process as the run began, not by a size of our own (300 MiB failed
    # in CI for a worker already at ~250 MB; broken flow control takes
    # kernel 0 250 MB and more past it)
    assert hwm0 < launcher_rss + 64 * mib and hwm1 < launcher_rss + 64 * mib, (hwm0, hwm1, launcher_rss)


def test_kernel_error_base_class():
    assert issubclass(KernelProcessError, KernelError)


def test_a_frame_that_must_wrap_around_a_full_ring_does_not_hang():
    """A 3 MB frame after a 2.2 MB one cannot fit at the end of a 4 MiB ring:
    the producer publishes a wrap marker and waits; the consumer, stepping
    over the marker, frees the space without reading a frame, and must
    still wake the producer (found in review: this hung forever)."""
    flow = Dataflow("wrap")
    out = (flow.from_iterable(["x" * 2_200_000, "-", "y" * 3_000_000, "-"], batch_size=1)
           .key_by(lambda s: 1 if s[0] in "xy" else 0)  # the big ones go to kernel 1
           .map(lambda kv: (kv[0], len(kv[1]))).collect())
    result: list = []
    runner = threading.Thread(target=lambda: result.append(run(flow, cores=2)), daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive(), "the run hung"
    assert sorted(out.items) == [(0, 1), (0, 1), (1, 2_200_000), (1, 3_000_000)]


@contextlib.asynccontextmanager
async def endless_run_telling_its_kernels(cores: int = 2):
    """`run_async` of an endless flow on `cores` kernels, as a task; the
    source of each kernel writes its pid on a pipe when it starts reading.
    Yields `(task, reading)`: `await reading` gives the kernels' pids, once
    all of them read (tests synchronise on it rather than wait). The task
    is cancelled, and its end awaited, on leaving."""
    running_r, running_w = os.pipe()

    async def forever():
        os.write(running_w, struct.pack("<q", os.getpid()))
        while True:
            yield 1
            await asyncio.sleep(0.001)

    flow = Dataflow("endless")
    flow.from_async_iterable(forever).key_by(lambda n: n).count().collect()
    loop = asyncio.get_running_loop()
    reading = loop.create_future()
    said = bytearray()

    def on_running():
        said.extend(os.read(running_r, 8 * cores))
        if len(said) == 8 * cores and not reading.done():
            reading.set_result(sorted(pid for (pid,) in struct.iter_unpack("<q", bytes(said))))

    loop.add_reader(running_r, on_running)
    task = asyncio.create_task(run_async(flow, cores=cores))
    try:
        yield task, asyncio.wait_for(reading, 20)
    finally:
        task.cancel()
        await asyncio.wait({task}, timeout=10)
        loop.remove_reader(running_r)
        os.close(running_r)
        os.close(running_w)


async def test_cancelling_run_async_stops_its_kernel_processes():
    """An application that cancels `await run_async(flow, cores=2)` (a
    timeout, a shutdown) gets its cancellation, and no kernel runs on: the
    launcher thread is told, kills its kernels and returns (no_leaks checks
    that no child process is left). Cancelled once both kernels are reading
    (each says so on a pipe), not after a fixed wait."""
    async with endless_run_telling_its_kernels() as (run_task, reading):
        await reading
        run_task.cancel()
        done, _ = await asyncio.wait({run_task}, timeout=10)
        assert done == {run_task}, "run_async did not end within 10 s of its cancellation"
        assert run_task.cancelled()


async def test_run_async_cancelled_twice_returns_once_its_kernels_are_gone():
    """A second cancellation of `await run_async(flow, cores=2)` (a shutdown
    that cancels twice, a timeout around a cancel) ended its wait for the
    launcher at once: the caller got its CancelledError with a kernel still
    running. The kernels tell their pids on a pipe; when the task has
    ended, neither may exist any more (the launcher reaps what it kills)."""
    async with endless_run_telling_its_kernels() as (run_task, reading):
        pids = await reading
        run_task.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # it is waiting for the launcher to stop the kernels
        run_task.cancel()
        done, _ = await asyncio.wait({run_task}, timeout=10)
        assert done == {run_task} and run_task.cancelled()
        assert [pid for pid in pids if os.path.exists(f"/proc/{pid}")] == []


async def test_a_kernel_of_run_async_dies_of_sigterm_though_the_host_handles_it():
    """An application that handles SIGTERM itself (`loop.add_signal_handler`)
    runs `run_async(flow, cores=2)`; a kernel sent SIGTERM must die and end
    the run naming it, as under `run`. Forked with the host's handler (a
    no-op writing to the host loop's wakeup fd), the kernel ignored it and
    the run went on. The kernels say on a pipe that they are reading, with
    their pids; the bounds are upper bounds."""
    import signal

    loop = asyncio.get_running_loop()
    host_told = []
    loop.add_signal_handler(signal.SIGTERM, host_told.append, "SIGTERM")
    try:
        async with endless_run_telling_its_kernels() as (run_task, reading):
            kernel_pids = await reading
            os.kill(kernel_pids[1], signal.SIGTERM)
            with pytest.raises(KernelProcessError, match="was killed by SIGTERM"):
                await asyncio.wait_for(run_task, 10)
            assert host_told == []  # the kernel's signal, not the host's
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def live_until_released(release_r: int, release_w: int) -> None:
    """In a forked process: wait until the test closes `release_w` (or
    ends), 8 s at most, then exit: bounded, so that supervision broken
    again fails its test (a launcher waiting on a pipe this process holds)
    rather than hanging it. (Its own copy of the write end is closed
    first, or it would wait for itself.)"""
    os.close(release_w)
    select.select([release_r], [], [], 8)
    os._exit(0)


async def test_a_kernel_death_is_reported_though_a_process_forked_meanwhile_holds_its_pipe(monkeypatch):
    """Runs launched at once fork from their own threads: another run's
    kernel, forked between this run's making a kernel's result pipe and
    closing its write end, holds a copy, so the pipe of a kernel that died
    never reached end-of-file and the launcher's recv() waited for that
    process (2 of 14 scratch runs of four endless runs beside one whose
    kernel died hung, and could not be cancelled). Here a process forked
    as each pipe is made (as such a kernel would be) lives until the test
    ends (8 s at most): the death must be reported well before."""
    import multiprocessing

    real = multiprocessing.get_context("fork")
    holders: list[int] = []
    release_r, release_w = os.pipe()  # the holders live until the test lets them go

    class Forking:
        def __getattr__(self, name):
            return getattr(real, name)

        def Pipe(self, duplex=True):
            ends = real.Pipe(duplex)
            pid = os.fork()
            if pid == 0:  # holds both ends, as another run's kernel would
                live_until_released(release_r, release_w)
            holders.append(pid)
            return ends

    monkeypatch.setattr(multiprocessing, "get_context", lambda method=None: Forking())

    def die(n):
        os.kill(os.getpid(), signal.SIGKILL)
        return n

    flow = Dataflow("dies")
    flow.from_iterable(range(4)).map(die).collect()
    try:
        with pytest.raises(KernelProcessError, match="killed by SIGKILL"):
            await asyncio.wait_for(run_async(flow, cores=2), 5)
    finally:
        os.close(release_w)
        for pid in holders:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(release_r)


async def test_a_kernel_that_forks_a_process_and_dies_is_reported_at_once():
    """A kernel's function forks a process (a helper, a fork pool) and the
    kernel dies: that process holds the kernel's sentinel pipe too, so the
    launcher saw the death only once that process had ended (for ever, for
    one that never does), and each join of a killed kernel took its whole
    5 s. Here the forked process lives until the test ends (8 s at most):
    the death must be reported well before."""
    pids_r, pids_w = os.pipe()
    release_r, release_w = os.pipe()  # the forked process lives until the test lets it go

    def fork_and_die(n):
        pid = os.fork()
        if pid == 0:  # holds every fd of the kernel
            live_until_released(release_r, release_w)
        os.write(pids_w, struct.pack("i", pid))
        os.kill(os.getpid(), signal.SIGKILL)
        return n

    flow = Dataflow("forks")
    flow.from_iterable(range(4)).map(fork_and_die).collect()
    started = time.monotonic()
    try:
        with pytest.raises(KernelProcessError, match="killed by SIGKILL"):
            await asyncio.wait_for(run_async(flow, cores=2), 6)
        assert time.monotonic() - started < 4  # (before: the forked process's whole life)
    finally:
        os.close(pids_w)
        os.set_blocking(pids_r, False)
        try:
            forked = os.read(pids_r, 64)
        except BlockingIOError:
            forked = b""
        os.close(pids_r)
        os.close(release_w)
        for (pid,) in struct.iter_unpack("i", forked):
            os.kill(pid, signal.SIGKILL)
        os.close(release_r)


async def a_served_connection() -> tuple:
    """A TCP server of this loop on a free port, and one connection to it:
    `(server, port, client reader, client writer, the server's writer)`."""
    served = asyncio.Queue()

    async def serve(_reader, writer):
        await served.put(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client_reader, client_writer = await asyncio.open_connection("127.0.0.1", port)
    return server, port, client_reader, client_writer, await asyncio.wait_for(served.get(), 10)


async def test_a_connection_the_host_closes_while_run_runs_on_a_thread_is_closed():
    """`await asyncio.to_thread(run, flow, cores=2)`: the kernels are forked
    from the application as under run_async, and held copies of its
    sockets: a connection it closed while they ran reached its client only
    when the run ended. The kernel reading record 0 says so on a pipe and
    waits for the test's word to go on."""
    running_r, running_w = os.pipe()
    go_r, go_w = os.pipe()

    def held(n):
        if n == 0:
            os.write(running_w, b"r")
            os.read(go_r, 1)
        return n

    server, _port, client_reader, client_writer, accepted = await a_served_connection()
    flow = Dataflow("held")
    out = flow.from_iterable(range(6)).map(held).collect()
    loop = asyncio.get_running_loop()
    job = asyncio.ensure_future(asyncio.to_thread(run, flow, cores=2))
    try:
        await asyncio.wait_for(loop.run_in_executor(None, os.read, running_r, 1), 20)
        accepted.close()
        await accepted.wait_closed()
        assert await asyncio.wait_for(client_reader.read(10), 5) == b""  # while the run goes on
        assert not job.done()
    finally:
        os.write(go_w, b"g")
        await asyncio.wait_for(job, 20)
        client_writer.close()
        server.close()
        await server.wait_closed()
        for fd in (running_r, running_w, go_r, go_w):
            os.close(fd)
    assert sorted(out.items) == list(range(6))


async def test_a_host_socket_let_go_by_run_async_kernels_never_writes_into_a_kernel_fd():
    """The kernels let go of the application's stream sockets, but its
    socket objects, inherited too, still hold their numbers: a closed
    number, given to the kernel's next socket (uvloop's own, a flow's
    connection), received what the application's object (a logging
    SocketHandler) later wrote, and was closed by it: uvloop aborted
    (SIGABRT). Each kernel opens 64 socketpairs, then sends through the
    host's connected socket: no pair may have its number, nothing may
    arrive in one, and the send must fail."""
    listener = socket.create_server(("127.0.0.1", 0))
    host = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    checked: dict = {}

    def probe(_n):
        if not checked:
            pairs = [socket.socketpair() for _ in range(64)]  # take the free numbers
            try:
                host.send(b"stray")
                failed = False
            except OSError:
                failed = True
            stray = False
            for end in (end for pair in pairs for end in pair):
                end.setblocking(False)
                try:
                    stray = stray or bool(end.recv(16))
                except BlockingIOError:
                    pass
            try:  # the host's number: still a socket, connected to nothing
                what = "socket" if stat.S_ISSOCK(os.fstat(host.fileno()).st_mode) else "other"
                host.getpeername()
                what += " connected"
            except OSError as exc:
                what += f" {errno.errorcode[exc.errno]}"
            checked["result"] = (what, stray, failed)
        return checked["result"]

    flow = Dataflow("probe")
    out = flow.from_iterable(range(8)).map(probe).collect()
    try:
        await asyncio.wait_for(run_async(flow, cores=2), 60)
    finally:
        host.close()
        accepted.close()
        listener.close()
    assert out.items == [("socket ENOTCONN", False, True)] * 8


async def test_a_connection_the_host_closes_while_run_async_runs_is_closed():
    """An application serving TCP runs `run_async(flow, cores=2)`; a
    connection it accepted before and closes while the kernels run must
    reach its client as closed, and the port it stops serving must be
    free. The forked kernels held copies of both sockets: the client never
    saw the end (for as long as the run ran) and the port stayed bound.
    Synchronised on the kernels saying they read; bounds, not waits."""
    server, port, client_reader, client_writer, accepted = await a_served_connection()
    try:
        async with endless_run_telling_its_kernels() as (run_task, reading):
            await reading
            accepted.close()
            await accepted.wait_closed()
            assert await asyncio.wait_for(client_reader.read(10), 5) == b""  # the end reached the client
            server.close()
            await server.wait_closed()
            probe = socket.socket()
            try:
                # SO_REUSEADDR: bound despite the closed connection's TIME_WAIT,
                # refused while a socket still listens on the port
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind(("127.0.0.1", port))
                probe.listen()
            finally:
                probe.close()
            assert not run_task.done()
    finally:
        client_writer.close()


async def test_a_running_run_async_leaves_the_default_executor_to_the_host():
    """A run on cores holds its launcher thread for as long as it runs: on
    the loop's default executor (min(32, CPUs + 4) threads, here one), the
    host's `run_in_executor`/`to_thread`/`getaddrinfo` calls waited for as
    long as the runs ran, and so did another run (and cancelling it hung).
    Each must go on while an endless run is reading (both its kernels have
    said so on a pipe); the bounds are upper bounds, not waits."""
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=1)
    loop.set_default_executor(executor)
    try:
        async with endless_run_telling_its_kernels() as (run_task, reading):
            await reading
            assert await asyncio.wait_for(loop.run_in_executor(None, lambda: 42), 5) == 42
            bounded = Dataflow("bounded")
            counts = bounded.from_iterable(range(1000)).key_by(lambda n: n % 7).count().collect()
            await asyncio.wait_for(run_async(bounded, cores=2), 20)
            assert dict(counts.items) == Counter(n % 7 for n in range(1000))
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    assert run_task.cancelled()


@pytest.mark.parametrize("cores", [2, 3])
def test_batches_larger_than_a_ring_cross_kernels_in_pieces(cores):
    """A ring holds 4 MiB: a 9 MB record, and a batch of records that
    encodes to ~6 MB, travel in pieces and arrive whole, in order with the
    frames around them, watermarks included."""
    big = "b" * 9_000_000
    medium = [f"m{i:07d}" + "x" * 600 for i in range(10_000)]  # one batch of ~6 MB
    records = [("big", 0.0, big), *(("medium", 1.0, m) for m in medium), ("small", 2.0, "s")]
    flow = Dataflow("big")
    out = (flow.from_iterable(records, timestamp=lambda r: r[1], batch_size=20_000)
           .key_by(lambda r: r[0])  # every record of a key on one kernel
           .map_values(lambda r: (len(r[2]), r[2][:8]))
           .window(Tumbling(10.0)).collect().collect())
    run(flow, cores=cores)
    got = {key: values for key, _window, values in out.items}
    assert got["big"] == [(9_000_000, "bbbbbbbb")]
    assert sorted(got["medium"]) == [(608, m[:8]) for m in medium]  # (equal timestamps: any order)
    assert got["small"] == [(1, "s")]


def test_records_of_every_size_cross_small_rings_intact(monkeypatch):
    """Held up: 4 KiB rings (pieces of 1 KiB), records whose frames fall on
    both sides of the 512-byte copy limit, exactly a piece, several pieces,
    and in backpressure: every record arrives once, intact, in order per
    sender and key."""
    import kernel.execution._cores as launcher

    monkeypatch.setattr(launcher, "RING_BYTES", 4 << 10)
    sizes = [0, 1, 490, 495, 496, 497, 498, 1010, 1011, 1012, 1019, 1020, 3000, 9000]
    records = [(i % 5, i, "x" * sizes[i % len(sizes)] + str(i)) for i in range(700)]
    flow = Dataflow()
    out = (flow.from_iterable(records, batch_size=3)
           .key_by(lambda r: r[0])
           .fold(list, lambda acc, r: acc.append(r[1:]) or acc)
           .collect())
    run(flow, cores=2)
    got = dict(out.items)
    for key in range(5):
        mine = [r[1:] for r in records if r[0] == key]
        assert sorted(got[key]) == mine
        for kernel in (0, 1):  # in order from each sender
            share = [r for r in got[key] if r[0] % 2 == kernel]
            assert share == sorted(share)
