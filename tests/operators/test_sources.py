"""Sources: bounded iterables and async iterables, blocking and on the caller's loop."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import contextmanager

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import (
    Dataflow,
    KernelError,
    KernelProcessError,
    Operator,
    OperatorError,
    VirtualClock,
    run,
    run_async,
)

EXAMPLES = settings(max_examples=40, deadline=None)

ints = st.lists(st.integers(-1000, 1000), max_size=60)
batch_sizes = st.one_of(st.just(1), st.integers(1, 12), st.integers(60, 5000))


class BatchSizes(Operator):
    """Passes records on and records the length of every batch it sees."""

    def __init__(self, sizes: list) -> None:
        self.sizes = sizes

    def on_batch(self, port, batch):
        self.sizes.append(len(batch))
        self.emit(batch)


def collect_with_sizes(stream):
    sizes: list = []
    out = stream.apply(lambda: BatchSizes(sizes), name="sizes").collect()
    return out, sizes


# -- from_iterable --------------------------------------------------------------


@EXAMPLES
@given(ints, batch_sizes, st.sampled_from([list, tuple, iter, lambda d: (x for x in d)]))
def test_from_iterable_reads_any_iterable_in_batches(data, batch_size, wrap):
    flow = Dataflow()
    out, sizes = collect_with_sizes(flow.from_iterable(wrap(data), batch_size=batch_size))
    run(flow, clock=VirtualClock())  # the chain costs nothing: batches grow to batch_size
    assert out.items == data
    # The first poll reads 16 records (batch_size if fewer), each next twice
    # as many up to batch_size, then the remainder; no empty batch travels.
    assert sizes == ramp(len(data), batch_size)


def ramp(records: int, batch_size: int, first: int = 16) -> list[int]:
    """The batch sizes a source reads `records` in when its chain costs nothing."""
    sizes, wanted = [], first
    while records > 0:
        size = min(batch_size, wanted, records)
        sizes.append(size)
        records -= size
        wanted *= 2
    return sizes


def test_from_iterable_reads_a_range():
    flow = Dataflow()
    out = flow.from_iterable(range(3, 30, 4), batch_size=2).collect()
    run(flow)
    assert out.items == list(range(3, 30, 4))


@pytest.mark.parametrize("given", [5, None, 2.5])
def test_a_source_of_something_that_cannot_be_iterated_is_refused_when_the_flow_is_built(given):
    """from_iterable(5) failed in the kernel, once the run had started."""
    flow = Dataflow()
    with pytest.raises(TypeError) as info:
        flow.from_iterable(given)
    assert str(info.value) == ("from_iterable() needs an iterable (a list, a range, a generator...), "
                               f"got {given!r}")
    with pytest.raises(TypeError) as info:
        flow.from_async_iterable(given)
    assert str(info.value) == ("from_async_iterable() needs an async iterable or a function returning one, "
                               f"got {given!r}")
    assert not flow.graph.nodes


STEPS_WITH_A_NAME = {
    "from_iterable": lambda flow, name: flow.from_iterable([1], name=name),
    "from_async_iterable": lambda flow, name: flow.from_async_iterable(_nothing, name=name),
    "map": lambda flow, name: flow.from_iterable([1]).map(str, name=name),
    "key_by": lambda flow, name: flow.from_iterable([1]).key_by(str, name=name),
    "collect": lambda flow, name: flow.from_iterable([1]).collect(name=name),
    "sink": lambda flow, name: flow.from_iterable([1]).sink(print, name=name),
    "iterate": lambda flow, name: flow.from_iterable([1]).iterate(lambda s: (s, s), name=name),
}


@pytest.mark.parametrize("step", sorted(STEPS_WITH_A_NAME))
@pytest.mark.parametrize("name", [5, b"counts", ("a",)])
def test_a_step_name_other_than_a_str_is_refused(step, name):
    """map(fn, name=5) made a step labelled 5 (in errors, metrics and the
    snapshots' fingerprint)."""
    flow = Dataflow()
    with pytest.raises(TypeError) as info:
        STEPS_WITH_A_NAME[step](flow, name)
    assert str(info.value) == f"a step's name must be a str, got {name!r}"


@pytest.mark.parametrize(("options", "message"), [
    ({"idle_timeout": -1}, "idle_timeout must be a number of seconds > 0 or None, got -1"),
    ({"idle_timeout": True}, "idle_timeout must be a number of seconds > 0 or None, got True"),
    ({"idle_timeout": True, "timestamp": float},
     "idle_timeout must be a number of seconds > 0 or None, got True"),
    ({"max_delay": True, "timestamp": float}, "max_delay must be a finite number of seconds >= 0, got True"),
])
def test_event_time_options_are_checked_with_or_without_timestamps(options, message):
    """idle_timeout=-1 was taken without timestamp= (and met only the day
    one was added); True was taken for 1 second."""
    with pytest.raises(ValueError) as info:
        Dataflow().from_async_iterable(_nothing, **options)
    assert str(info.value) == message


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10"])
def test_from_iterable_rejects_a_bad_batch_size(bad):
    # Refused when the flow is built or at the latest when it runs.
    with pytest.raises(ValueError, match="batch_size"):
        flow = Dataflow()
        flow.from_iterable([1, 2], batch_size=bad).collect()
        run(flow)
    with pytest.raises(ValueError, match="batch_size"):
        flow = Dataflow()
        flow.from_async_iterable(_nothing, batch_size=bad).collect()
        run(flow)


async def _nothing():
    return
    yield


def test_an_iterable_whose_iter_fails_names_the_source():
    # (a non-iterable, 42, is refused when the flow is built: see below)
    class Unopenable:
        def __iter__(self):
            raise TypeError("the cursor is closed")

    flow = Dataflow()
    flow.from_iterable(Unopenable()).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.operator == "from_iterable (step 0)"
    assert isinstance(info.value.__cause__, TypeError)
    assert str(info.value.__cause__) == "the cursor is closed"


def test_an_iterable_that_raises_midway_names_the_source():
    boom = ValueError("disk on fire")

    def lines():
        yield "a"
        yield "b"
        raise boom

    flow = Dataflow()
    flow.from_iterable(lines(), batch_size=1, name="read_lines").collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.operator == "read_lines (step 0)"
    assert info.value.record is None
    assert info.value.__cause__ is boom


# -- an iterator can be read once ----------------------------------------------------

ONE_SHOT = {
    "generator": lambda: (x * 10 for x in range(7)),
    "iter(list)": lambda: iter([x * 10 for x in range(7)]),
    "map": lambda: map((10).__mul__, range(7)),
}


def _refusal(flow, cores):
    """The KernelError a run of `flow` is refused with (on several kernels,
    the failed kernel's)."""
    if cores == 1:
        with pytest.raises(KernelError) as info:
            run(flow)
        return info.value
    with pytest.raises(KernelProcessError) as info:
        run(flow, cores=cores)
    return info.value.__cause__


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("kind", list(ONE_SHOT))
def test_a_second_run_over_an_iterator_the_first_run_read_is_refused(kind, cores):
    # It used to give no records at all, without a word.
    flow = Dataflow()
    out = flow.from_iterable(ONE_SHOT[kind](), batch_size=3, name="numbers").collect()
    run(flow)
    assert out.items == [x * 10 for x in range(7)]
    err = _refusal(flow, cores)
    assert type(err) is KernelError
    assert str(err).startswith("numbers (step 0): its input <")
    assert "is an iterator that an earlier run of this flow read" in str(err)
    assert "a list, a range or another re-iterable" in str(err)


def test_kernel_processes_read_their_own_copies_of_an_iterator():
    # Forked kernel processes iterate copies: the caller's iterator stays
    # unread, for another run on several kernels or one; after that, it is read.
    flow = Dataflow()
    out = flow.from_iterable((x for x in range(9)), batch_size=2).collect()
    run(flow, cores=2)
    assert sorted(out.items) == list(range(9))
    run(flow, cores=2)
    assert sorted(out.items) == list(range(9))
    run(flow)
    assert out.items == list(range(9))
    assert "earlier run" in str(_refusal(flow, 1))


def test_a_run_that_fails_before_reading_leaves_the_iterator_to_the_next():
    opened = []

    class FailsToOpenOnce(Operator):
        def open(self, context):  # opened after the source
            opened.append(True)
            if len(opened) == 1:
                raise RuntimeError("not ready yet")

        def on_batch(self, port, batch):
            self.emit(batch)

    flow = Dataflow()
    out = flow.from_iterable((x for x in range(5)), batch_size=2).apply(FailsToOpenOnce).collect()
    with pytest.raises(OperatorError, match="not ready yet"):
        run(flow)
    run(flow)
    assert out.items == [0, 1, 2, 3, 4]


async def test_a_second_run_over_an_async_generator_object_is_refused():
    async def agen():
        for i in range(4):
            yield i

    flow = Dataflow()
    out = flow.from_async_iterable(agen(), name="feed").collect()
    await run_async(flow)
    assert out.items == [0, 1, 2, 3]
    with pytest.raises(KernelError, match=r"^feed \(step 0\): its input .* earlier run") as info:
        await run_async(flow)
    assert "the async generator function" in str(info.value)


def test_a_file_object_that_kernel_processes_would_share_is_refused(tmp_path):
    # Forked kernels share the file's read position: each read what the
    # others skipped, and kept every other line of it (half the lines lost).
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"{i}\n" for i in range(5000)))
    with open(path) as lines:
        flow = Dataflow()
        flow.from_iterable(lines, name="lines").collect()
        err = _refusal(flow, 2)
    assert str(err).startswith("lines (step 0): its input <_io.TextIOWrapper")
    assert "would share its read position" in str(err)


def test_a_file_object_on_one_kernel_is_read_whole(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("".join(f"{i}\n" for i in range(5000)))
    with open(path) as lines:
        flow = Dataflow()
        out = flow.from_iterable(lines).map(int).collect()
        run(flow)
    assert out.items == list(range(5000))


# -- from_async_iterable ------------------------------------------------------------


def make_agen(data, *, pause: bool):
    async def agen():
        for x in data:
            if pause:
                await asyncio.sleep(0)
            yield x

    return agen


@EXAMPLES
@given(ints, batch_sizes, st.booleans(), st.booleans())
def test_from_async_iterable_blocking_run(data, batch_size, pause, as_object):
    agen = make_agen(data, pause=pause)
    flow = Dataflow()
    source = agen() if as_object else agen
    out, sizes = collect_with_sizes(flow.from_async_iterable(source, batch_size=batch_size))
    run(flow)
    assert out.items == data
    assert all(0 < n <= batch_size for n in sizes)


@pytest.mark.parametrize("as_object", [False, True], ids=["function", "object"])
@pytest.mark.parametrize("pause", [False, True], ids=["eager", "sleep0"])
@pytest.mark.parametrize("batch_size", [1, 3, 1000])
async def test_from_async_iterable_on_the_callers_loop(as_object, pause, batch_size):
    data = [f"r{i}" for i in range(25)]
    agen = make_agen(data, pause=pause)
    flow = Dataflow()
    out, sizes = collect_with_sizes(
        flow.from_async_iterable(agen() if as_object else agen, batch_size=batch_size).map(str.upper)
    )
    await run_async(flow)
    assert out.items == [x.upper() for x in data]
    assert all(0 < n <= batch_size for n in sizes)


async def test_async_reader_pauses_when_a_batch_is_waiting():
    # An eager generator (never awaits) would read everything at once; with
    # batch_size 4 the reader must wait for the source to take each batch.
    produced = []
    consumed = []

    async def agen():
        for i in range(40):
            produced.append((i, len(consumed)))
            yield i

    flow = Dataflow()
    out, sizes = collect_with_sizes(flow.from_async_iterable(agen, batch_size=4).inspect(consumed.append))
    await run_async(flow)
    assert out.items == list(range(40))
    assert sizes == [4] * 10
    # Producing record i never runs far ahead of what the dataflow consumed.
    lags = [i - seen for i, seen in produced]
    assert max(lags) <= 2 * 4, lags


async def test_a_flow_with_an_async_generator_function_runs_twice():
    async def agen():
        for i in range(5):
            await asyncio.sleep(0)
            yield i

    flow = Dataflow()
    out = flow.from_async_iterable(agen, batch_size=2).collect()
    await run_async(flow)
    first = list(out.items)
    await run_async(flow)
    assert first == out.items == [0, 1, 2, 3, 4]


async def test_host_tasks_keep_running_while_an_async_source_reads():
    ticks = []

    async def host():
        for i in range(5):
            ticks.append(i)
            await asyncio.sleep(0)

    async def agen():
        for i in range(50):
            await asyncio.sleep(0)
            yield i

    flow = Dataflow()
    out = flow.from_async_iterable(agen).collect()
    host_task = asyncio.ensure_future(host())
    await run_async(flow)
    assert ticks == [0, 1, 2, 3, 4]  # interleaved with the flow, finished before it
    await host_task
    assert out.items == list(range(50))


def test_from_async_iterable_of_a_non_async_iterable_fails_when_the_flow_is_built_or_at_open():
    """A list is refused when the flow is built; what a function returns is
    known only when the source opens."""
    flow = Dataflow()
    with pytest.raises(TypeError) as refused:
        flow.from_async_iterable([1, 2, 3], name="feed")
    assert str(refused.value) == ("from_async_iterable() needs an async iterable or a function returning "
                                  "one, got [1, 2, 3]")
    flow.from_async_iterable(lambda: [1, 2, 3], name="feed").collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.operator == "feed (step 0)"
    assert info.value.function.endswith("AsyncIterableSource.open")
    assert isinstance(info.value.__cause__, TypeError)
    assert "not an async iterable" in str(info.value.__cause__)


async def test_an_async_iterable_that_raises_names_the_source():
    boom = RuntimeError("socket closed")

    async def agen():
        yield 1
        await asyncio.sleep(0)
        raise boom

    flow = Dataflow()
    flow.from_async_iterable(agen, name="socket").collect()
    with pytest.raises(OperatorError) as info:
        await run_async(flow)
    assert info.value.operator == "socket (step 0)"
    assert info.value.record is None
    assert info.value.__cause__ is boom


def test_run_refuses_to_block_a_running_loop():
    async def main():
        flow = Dataflow()
        flow.from_iterable([1]).collect()
        with pytest.raises(RuntimeError, match="run_async"):
            run(flow)

    asyncio.run(main())


@pytest.mark.parametrize("cores", [0, -2, "1"])
def test_run_rejects_a_bad_core_count(cores):
    flow = Dataflow()
    flow.from_iterable([1]).collect()
    with pytest.raises(ValueError, match="cores"):
        run(flow, cores=cores)


# -- more kernels than CPUs ---------------------------------------------------------


@contextmanager
def one_cpu():
    """This thread (and the kernel processes it starts) on one CPU."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def _core_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kernel" and "cores=" in r.getMessage()]


def test_more_kernels_than_cpus_run_with_a_warning(caplog):
    # Warned, not refused: kernels share CPUs correctly, only slower.
    flow = Dataflow()
    out = flow.from_iterable(range(6)).key_by(_mod3).count().collect()
    with one_cpu(), caplog.at_level(logging.WARNING, logger="kernel"):
        run(flow, cores=2)
    assert sorted(out.items) == [(0, 2), (1, 2), (2, 2)]
    assert _core_warnings(caplog) == [
        "cores=2, but this process may use only 1 CPU (os.sched_getaffinity): the kernels will "
        "share CPUs, and run slower than with cores=1"]


def test_as_many_kernels_as_cpus_run_without_a_warning(caplog):
    flow = Dataflow()
    flow.from_iterable(range(6)).collect()
    with one_cpu(), caplog.at_level(logging.WARNING, logger="kernel"):
        run(flow, cores=1)
    assert _core_warnings(caplog) == []


def _mod3(x):
    return x % 3
