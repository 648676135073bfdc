"""A user function that raises a BaseException that is not an Exception.

A `class Stop(BaseException)`, GeneratorExit and SystemExit are the
function's failure, reported as any exception is: the step, the function and
the record (SystemExit with a line saying it cannot end the run). A
KeyboardInterrupt is a Ctrl-C, wherever it lands: the run raises it as
itself, on one kernel and on several."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from kernel import Dataflow, KernelError, KernelProcessError, Operator, OperatorError, run, run_async
from kernel.dataflow._errors import (
    EXIT_IN_FUNCTION,
    UNHASHABLE_ACROSS_KERNELS,
    UNHASHABLE_KEY,
    UNPICKLABLE_RECORD,
)
from kernel.runtime._epochs import UNPICKLABLE_STATE
from net import Partitioner
from operators import Tumbling


class Stop(BaseException):
    """A user's own control-flow exception, outside the Exception hierarchy."""


def raising(exc: BaseException):
    def boom(x):
        if x == 6:
            raise exc
        return x

    return boom


def raising_combine(exc: BaseException):
    def combine(acc, x):
        if x == 6:
            raise exc
        return acc + x

    return combine


def _same(x):
    return x


def _const(x):
    return "k"


class Halting(Operator):
    """A user operator whose on_batch raises `exc` at the batch holding 6."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def on_batch(self, port, batch):
        if 6 in batch:
            raise self.exc
        self.emit(batch)


def _spread(boom):
    def spread(x):
        return [boom(x)]

    return spread


def _stateful(boom):
    def count(state, x):
        boom(x)
        return (state or 0) + 1, x

    return count


def _async_raising(exc: BaseException):
    async def numbers():
        for x in range(10):
            if x == 6:
                raise exc
            yield x

    return numbers


def _factory_raising(exc: BaseException):
    def make():
        raise exc

    return make


def _from(flow):
    return flow.from_iterable(range(10), batch_size=4)


# case -> (build the flow around the failing exception, the step, the
# function, the record it was given)
CASES = {
    "map": (lambda f, e: _from(f).map(raising(e)), "map(boom) (step 1)", "boom", "6"),
    "filter": (lambda f, e: _from(f).filter(raising(e)), "filter(boom) (step 1)", "boom", "6"),
    "flat_map": (lambda f, e: _from(f).flat_map(_spread(raising(e))), "flat_map(spread) (step 1)",
                 "spread", "6"),
    "inspect": (lambda f, e: _from(f).inspect(raising(e)), "inspect(boom) (step 1)", "boom", "6"),
    "sink": (lambda f, e: _from(f).sink(raising(e)), "sink(boom) (step 1)", "boom", "6"),
    "key_by": (lambda f, e: _from(f).key_by(raising(e)), "key_by(boom) (step 1)", "boom", "6"),
    "fused map": (lambda f, e: _from(f).map(_same).map(raising(e)), "map(boom) (step 2)", "boom", "6"),
    "map_values": (lambda f, e: _from(f).key_by(_const).map_values(raising(e)),
                   "map_values(boom) (step 2)", "boom", "('k', 6)"),
    "reduce": (lambda f, e: _from(f).key_by(_const).reduce(raising_combine(e)),
               "reduce(combine) (step 2)", "combine", "('k', 6)"),
    "stateful_map": (lambda f, e: _from(f).key_by(_const).stateful_map(_stateful(raising(e))),
                     "stateful_map(count) (step 2)", "count", "('k', 6)"),
    "window reduce": (lambda f, e: f.from_iterable(range(10), timestamp=float).key_by(_const)
                      .window(Tumbling(4.0)).reduce(raising_combine(e)),
                      "window reduce(combine) Tumbling(4.0) (step 2)", "combine", "('k', 6)"),
    "timestamp": (lambda f, e: f.from_iterable(range(10), timestamp=raising(e)),
                  "from_iterable (step 0)", "boom", "6"),
    "async source": (lambda f, e: f.from_async_iterable(_async_raising(e)), "from_async_iterable (step 0)",
                     "numbers", None),
    "user operator": (lambda f, e: _from(f).apply(lambda: Halting(e), name="halting"), "halting (step 1)",
                      "Halting.on_batch", None),
    "operator factory": (lambda f, e: _from(f).apply(_factory_raising(e), name="making"), "making (step 1)",
                         "make", None),
    "source factory": (lambda f, e: f.source(_factory_raising(e), name="reading"), "reading (step 0)",
                       "make", None),
}


def _flow(case: str, exc: BaseException) -> Dataflow:
    flow = Dataflow("halting")
    stream = CASES[case][0](flow, exc)
    if stream is not None:
        stream.collect()
    return flow


def expected_message(case: str, error: str, hint: str | None = None) -> str:
    _, step, function, record = CASES[case]
    if case == "user operator":
        qualified = f"{__name__}.{function}"
    else:
        qualified = f"{__name__}.{_outer(case)}.<locals>.{function}"
    text = f"operator {step!r}: function {qualified!r} raised {error}"
    if record is not None:
        text += f"\n  on record: {record}"
    if hint is not None:
        text += f"\n  {hint}"
    return text


def _outer(case: str) -> str:
    """The function that made the case's user function (its qualname's head)."""
    return {"flat_map": "_spread", "reduce": "raising_combine", "window reduce": "raising_combine",
            "stateful_map": "_stateful", "async source": "_async_raising",
            "operator factory": "_factory_raising", "source factory": "_factory_raising"}.get(case, "raising")


@pytest.mark.parametrize("case", list(CASES))
def test_a_base_exception_names_the_step_the_function_and_the_record(case):
    stop = Stop("halt")
    with pytest.raises(OperatorError) as info:
        run(_flow(case, stop))
    assert str(info.value) == expected_message(case, "Stop: halt")
    assert info.value.__cause__ is stop


@pytest.mark.parametrize("case", ["map", "reduce", "user operator", "async source", "operator factory"])
def test_generator_exit_raised_by_a_function_is_its_failure(case):
    """An async source's came out as `TaskError: task 'from_async_iterable
    (step 0) reader' raised GeneratorExit`: its reader let every
    GeneratorExit through, taking it for its own closing."""
    closing = GeneratorExit("closing")
    with pytest.raises(OperatorError) as info:
        run(_flow(case, closing))
    assert str(info.value) == expected_message(case, "GeneratorExit: closing")
    assert info.value.__cause__ is closing


@pytest.mark.parametrize("code", [0, 3])
@pytest.mark.parametrize("case", ["map", "fused map", "timestamp", "user operator", "async source",
                                  "operator factory"])
def test_sys_exit_in_a_function_fails_the_run_whatever_its_code(case, code):
    """sys.exit(0) mid-stream is no successful end of the run: on one kernel
    it ended `run()` with SystemExit(0), as if the run had completed."""
    with pytest.raises(OperatorError) as info:
        run(_flow(case, SystemExit(code)))
    assert str(info.value) == expected_message(case, f"SystemExit: {code}", EXIT_IN_FUNCTION)
    assert isinstance(info.value.__cause__, SystemExit)


def test_on_two_kernels_a_base_exception_names_the_step_as_on_one():
    with pytest.raises(KernelProcessError) as info:
        run(_flow("map", Stop("halt")), cores=2)
    assert isinstance(info.value.__cause__, OperatorError)
    assert str(info.value.__cause__) == expected_message("map", "Stop: halt")


@pytest.mark.parametrize("exc", [GeneratorExit("closing"), Stop("halt"), ValueError("bad")],
                         ids=["GeneratorExit", "Stop", "ValueError"])
def test_on_two_kernels_an_async_source_names_the_step_as_on_one(exc):
    with pytest.raises(KernelProcessError) as info:
        run(_flow("async source", exc), cores=2)
    assert isinstance(info.value.__cause__, OperatorError)
    error = f"{type(exc).__name__}: {exc}"
    assert str(info.value.__cause__) == expected_message("async source", error)


@pytest.mark.parametrize("waits", ["for room", "in the iterator"])
def test_closing_an_async_sources_reader_is_no_error_of_its_iterator(waits):
    """The GeneratorExit that closing the reader throws in (what collecting
    its unfinished task does) is the reader's own ending: closing it must
    not raise the iterator's failure (an OperatorError out of `close()`),
    whether the reader waits for room in its buffer or for the iterator."""
    reached = []

    async def endless():
        for x in itertools.count():
            reached.append(x)
            yield x
            if waits == "in the iterator" and x >= 1:
                await asyncio.Event().wait()

    async def scenario():
        flow = Dataflow("endless")
        flow.from_async_iterable(endless, batch_size=2 if waits == "for room" else 100).collect()
        running = asyncio.ensure_future(run_async(flow))
        while len(reached) < 2:
            await asyncio.sleep(0)
        (reader,) = [task for task in asyncio.all_tasks() if task.get_name().endswith(" reader")]
        reader.get_coro().close()  # raises what the coroutine raises instead of ending
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    asyncio.run(scenario())


class EndsWithWork(Operator):
    """A user operator whose on_end hands back work of its own (a task)
    that raises `exc`."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def on_batch(self, port, batch):
        self.emit(batch)

    def on_end(self):
        async def flush():
            await asyncio.sleep(0)
            raise self.exc

        return asyncio.ensure_future(flush())


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("exc", [Stop("halt"), GeneratorExit("closing"), ValueError("bad")],
                         ids=["Stop", "GeneratorExit", "ValueError"])
def test_the_work_on_end_hands_back_fails_the_run_naming_the_step(exc, cores):
    """Its failure, an Exception or not, was dropped: the step ended as if
    the work had been done and the run succeeded ("Task exception was never
    retrieved" on stderr)."""
    flow = Dataflow("ending")
    _from(flow).apply(lambda: EndsWithWork(exc), name="ending").collect()
    expected = (f"operator 'ending (step 1)': function '{__name__}.EndsWithWork.on_end' raised "
                f"{type(exc).__name__}: {exc}")
    if cores == 1:
        with pytest.raises(OperatorError) as info:
            run(flow)
        assert info.value.__cause__ is exc
        error = info.value
    else:
        with pytest.raises(KernelProcessError) as info:
            run(flow, cores=2)
        error = info.value.__cause__
    assert str(error) == expected


class ExitsOnATimer(Operator):
    """A user operator whose processing-time timer calls sys.exit(0); its
    step ends once the timer has fired."""

    def on_batch(self, port, batch):
        if not hasattr(self, "fired"):
            self.fired = asyncio.get_running_loop().create_future()
            self.context.kernel.call_later(0.0, self.tick)
        self.emit(batch)

    def tick(self):
        self.fired.set_result(None)
        raise SystemExit(0)

    def on_end(self):
        return getattr(self, "fired", None)  # (a kernel that got no records ends at once)


@pytest.mark.parametrize("cores", [1, 2])
def test_sys_exit_0_in_a_timer_fails_the_run_naming_the_timer(cores):
    """On one kernel it ended `run()` with SystemExit(0), as if the run had
    completed (a pipeline file's process exited 0)."""
    flow = Dataflow("exiting")
    _from(flow).apply(ExitsOnATimer, name="exiting").collect()
    with pytest.raises(KernelError) as info:
        run(flow, cores=cores)
    error = info.value if cores == 1 else info.value.__cause__
    assert str(error) == "task 'call_later(ExitsOnATimer.tick)' raised SystemExit: 0"


@pytest.mark.parametrize("exc", [Stop("halt"), ValueError("bad")], ids=["Stop", "ValueError"])
def test_on_two_kernels_an_operator_factorys_failure_names_the_step_as_on_one(exc):
    """Raised bare, a factory's error named no step: on one kernel the run
    raised the Stop itself, past any `except Exception`."""
    with pytest.raises(KernelProcessError) as info:
        run(_flow("operator factory", exc), cores=2)
    assert str(info.value.__cause__) == expected_message("operator factory", f"{type(exc).__name__}: {exc}")


def test_on_two_kernels_sys_exit_0_fails_the_run_naming_the_step():
    with pytest.raises(KernelProcessError) as info:
        run(_flow("fused map", SystemExit(0)), cores=2)
    assert str(info.value.__cause__) == expected_message("fused map", "SystemExit: 0", EXIT_IN_FUNCTION)


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("case", ["map", "reduce", "user operator"])
def test_keyboard_interrupt_in_a_function_stops_the_run_as_a_ctrl_c(case, cores):
    """On two kernels it came back as `KernelProcessError: kernel N failed:
    KeyboardInterrupt`, where one kernel raised KeyboardInterrupt."""
    with pytest.raises(KeyboardInterrupt):
        run(_flow(case, KeyboardInterrupt()), cores=cores)


class Unprintable:
    """A record whose repr raises a BaseException that is not an Exception."""

    def __repr__(self):
        raise Stop("no repr")


class Mute(Exception):
    """An exception whose message raises a BaseException that is not an Exception."""

    def __str__(self):
        raise Stop("no message")


def _parse(x):
    if isinstance(x, Unprintable):
        raise ValueError("bad")
    if x == 2:
        raise Mute()
    return x


@pytest.mark.parametrize(("data", "error", "record"), [
    ([Unprintable()], "ValueError: bad", "<unrepresentable Unprintable: Stop>"),
    ([1, 2], "Mute: <exception str() failed> Mute()", "2"),
])
def test_a_record_or_message_whose_repr_raises_a_base_exception_still_names_the_step(data, error, record):
    """The error's own making raised: the run failed with `Stop: no repr`,
    blamed on the step's handler (or the source's activation), no record."""
    flow = Dataflow()
    flow.from_iterable(data).map(_parse).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert str(info.value) == (f"operator 'map(_parse) (step 1)': function '{__name__}._parse' raised {error}"
                               f"\n  on record: {record}")


class Unhashable:
    """A key whose hash raises a BaseException that is not an Exception."""

    def __hash__(self):
        raise Stop("no hash")

    def __repr__(self):
        return "Unhashable()"


class Unpicklable:
    """A record whose pickling raises a BaseException that is not an Exception."""

    def __reduce__(self):
        raise Stop("no pickle")

    def __repr__(self):
        return "Unpicklable()"


def _unhashable_key(x):
    return Unhashable()


def _with_unpicklable_at_1(x):
    return (x, Unpicklable() if x == 1 else None)


def _next_number(record):
    return record[0] + 1


def test_a_key_whose_hash_raises_a_base_exception_is_named_as_an_unhashable_key():
    """Asking whether the key is hashable raised again: the run failed
    naming key_by's handler (`...KeyBy.on_batch`), no record."""
    flow = Dataflow()
    flow.from_iterable(range(3)).key_by(_unhashable_key).count().collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert str(info.value) == ("operator 'count (step 2)': function 'hash(key)' raised Stop: no hash"
                               f"\n  on record: (Unhashable(), 0)\n  {UNHASHABLE_KEY}")


def test_a_record_whose_pickling_raises_a_base_exception_names_the_step_whose_output_crosses():
    """Record 1 is kernel 1's, and its key 2 kernel 0's: it crosses. Its
    Stop went past the codec and was blamed on the map before, no record."""
    from kernel.dataflow._key_groups import default_key_groups, owner_table

    assert Partitioner(2, owner_table(2, default_key_groups(2))).owner(2) == 0
    flow = Dataflow()
    flow.from_iterable(range(3)).map(_with_unpicklable_at_1).key_by(_next_number).collect()
    with pytest.raises(KernelProcessError) as info:
        run(flow, cores=2)
    assert str(info.value.__cause__) == (
        "operator 'key_by(_next_number) (step 2)': function 'pickle.dumps' raised Stop: no pickle"
        f"\n  on record: (2, (1, Unpicklable()))\n  {UNPICKLABLE_RECORD}")


def _unpicklable_key(x):
    return Unpicklable()


def test_a_key_whose_pickling_raises_a_base_exception_is_named_where_it_crosses_kernels():
    """A key of a class of its own crosses kernels by its pickle's hash: its
    Stop went past the exchange, blamed on key_by's handler, no record."""
    flow = Dataflow()
    flow.from_iterable([0]).key_by(_unpicklable_key).collect()  # one record: kernel 0's
    with pytest.raises(KernelProcessError) as info:
        run(flow, cores=2)
    assert str(info.value.__cause__) == (
        "operator 'key_by(_unpicklable_key) (step 1)': function 'net.stable_hash(key)' raised Stop: no pickle"
        f"\n  on record: (Unpicklable(), 0)\n  {UNHASHABLE_ACROSS_KERNELS}")


def _keep_unpicklable(state, x):
    return Unpicklable(), x


def test_state_whose_pickling_raises_a_base_exception_names_its_step(tmp_path):
    """An endless input: only the first snapshot failing ends the run. Its
    Stop was blamed on the step's `on_watermark`, with no word of state."""
    flow = Dataflow("endless")
    counted = flow.from_iterable(itertools.count(), batch_size=10).key_by(_const)
    counted.stateful_map(_keep_unpicklable).sink(id)
    with pytest.raises(OperatorError) as info:
        run(flow, state_dir=tmp_path / "state", epoch_interval=0.001)
    assert str(info.value) == ("operator 'stateful_map(_keep_unpicklable) (step 2)': function 'pickle.dumps' "
                               "raised Stop: no pickle\n  the state under key 'k' does not pickle (a "
                               "test_base_exceptions.Unpicklable, at ['states']['k'] in the step's snapshot)"
                               f"\n  {UNPICKLABLE_STATE}")
