"""The mid-level API: user `Operator` and `Source` subclasses, and the
runnable examples in the docstrings."""

from __future__ import annotations

import asyncio
import concurrent.futures
import doctest
import importlib
import importlib.util
import math
import pkgutil
import threading
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernel.dataflow._api
from kernel import Dataflow, Operator, OperatorError, Source, run, run_async

EXAMPLES = settings(max_examples=30, deadline=None)
ints = st.lists(st.integers(-100, 100), max_size=50)
batch_sizes = st.one_of(st.just(1), st.integers(1, 12), st.integers(60, 5000))


class Numbered(Operator):
    """The example of `Operator`'s docstring."""

    def open(self, context):
        self.n = 0

    def on_batch(self, port, batch):
        start = self.n
        self.n += len(batch)
        self.emit(list(enumerate(batch, start)))


class Tag(Operator):
    """Two (or more) inputs: tags every record with the port it came in on."""

    def on_batch(self, port, batch):
        self.emit([(port, x) for x in batch])


class Total(Operator):
    """Emits nothing until the input ends, then one record: the count and sum."""

    def open(self, context):
        self.count = 0
        self.total = 0

    def on_batch(self, port, batch):
        self.count += len(batch)
        self.total += sum(batch)

    def on_end(self):
        self.emit([("count", self.count), ("sum", self.total)])


class Traced(Operator):
    """Records every handler call, in order."""

    def __init__(self, trace):
        self.trace = trace

    def open(self, context):
        self.trace.append(("open", context.index, context.peers))

    def on_batch(self, port, batch):
        self.trace.append(("batch", port, list(batch)))
        self.emit(batch)

    def on_watermark(self, watermark):
        self.trace.append(("watermark", watermark))

    def on_end(self):
        self.trace.append(("end",))


@EXAMPLES
@given(ints, batch_sizes)
def test_apply_a_custom_operator(data, batch_size):
    flow = Dataflow()
    out = flow.from_iterable(data, batch_size=batch_size).apply(Numbered, name="numbered").collect()
    run(flow)
    assert out.items == list(enumerate(data))


@EXAMPLES
@given(ints, ints, batch_sizes, batch_sizes)
def test_an_operator_with_two_inputs_sees_each_on_its_own_port(left, right, size_l, size_r):
    flow = Dataflow()
    a = flow.from_iterable(left, batch_size=size_l)
    b = flow.from_iterable(right, batch_size=size_r)
    out = a.apply(Tag, inputs=(b,)).collect()
    run(flow)
    assert Counter(out.items) == Counter([(0, x) for x in left] + [(1, x) for x in right])
    assert [x for port, x in out.items if port == 0] == left
    assert [x for port, x in out.items if port == 1] == right


@EXAMPLES
@given(ints, batch_sizes)
def test_an_operator_that_emits_in_on_end(data, batch_size):
    flow = Dataflow()
    out = flow.from_iterable(data, batch_size=batch_size).apply(Total).map(list).collect()
    run(flow)
    assert out.items == [["count", len(data)], ["sum", sum(data)]]


def test_handlers_run_in_protocol_order():
    trace = []
    flow = Dataflow()
    a = flow.from_iterable([1, 2, 3], batch_size=2)
    b = flow.from_iterable(["x"], batch_size=5)
    a.apply(lambda: Traced(trace), inputs=(b,), name="traced").collect()
    run(flow)
    assert trace[0] == ("open", 0, 1)
    batches = [t for t in trace if t[0] == "batch"]
    assert sorted(batches, key=repr) == sorted(
        [("batch", 0, [1, 2]), ("batch", 0, [3]), ("batch", 1, ["x"])], key=repr
    )
    assert [t for t in batches if t[1] == 0] == [("batch", 0, [1, 2]), ("batch", 0, [3])]
    # One final watermark (the minimum over both inputs), after all data, then the end.
    assert trace[-2:] == [("watermark", math.inf), ("end",)]
    assert len(trace) == 1 + 3 + 2


def test_operator_name_and_context_are_installed():
    seen = {}

    class Probe(Operator):
        def open(self, context):
            seen["name"] = self.name
            seen["context"] = context is self.context

        def on_batch(self, port, batch):
            self.emit(batch)

    flow = Dataflow()
    flow.from_iterable([1]).apply(Probe, name="probe").collect()
    run(flow)
    assert seen == {"name": "probe (step 1)", "context": True}


def test_apply_checks_what_the_factory_returns():
    flow = Dataflow()
    flow.from_iterable([1]).apply(lambda: object(), name="nothing").collect()
    with pytest.raises(TypeError, match="nothing: factory returned"):
        run(flow)


class Urgent(Operator):
    task_class = "urgent"  # not a task class: "latency" or "throughput"

    def on_batch(self, port, batch):
        self.emit(batch)


class UrgentSource(Source):
    task_class = "urgent"

    def poll(self):
        return None


def test_an_operator_of_an_unknown_task_class_is_refused_naming_its_step():
    """It failed as a bare KeyError ('urgent') in the scheduler when the run
    started: now the class is refused when the flow is built, and what a
    function returns when the run makes the operator."""
    message = "{}: task_class must be 'latency' or 'throughput', got 'urgent'"
    flow = Dataflow()
    stream = flow.from_iterable([1])
    with pytest.raises(ValueError) as info:
        stream.apply(Urgent, name="hurry")
    assert str(info.value) == message.format("hurry")
    with pytest.raises(ValueError) as info:
        flow.source(UrgentSource, name="feed")
    assert str(info.value) == message.format("feed")
    stream.apply(lambda: Urgent(), name="hurry").collect()
    with pytest.raises(ValueError) as info:
        run(flow)
    assert str(info.value) == message.format("hurry")


class Reckoned(Source):
    """A source whose task class is its instance's (a property): the class holds no str."""

    def __init__(self, urgent: bool = True) -> None:
        self.urgent, self.left = urgent, 2

    @property
    def task_class(self):
        return "latency" if self.urgent else "throughput"

    def poll(self):
        if not self.left:
            return False
        self.left -= 1
        self.emit([self.left])
        return True


class Passing(Operator):
    __slots__ = ("task_class",)  # a slot: the class holds a member descriptor

    def __init__(self) -> None:
        self.task_class = "latency"

    def on_batch(self, port, batch):
        self.emit(batch)


def test_a_task_class_the_instance_tells_is_taken():
    # a6da27d's check refused both classes when the flow was built ("got <property object ...>");
    # 1afd100 ran them
    flow = Dataflow()
    out = flow.source(Reckoned, name="reckoned").apply(Passing, name="passing").collect()
    run(flow)
    assert out.items == [1, 0]


def test_apply_refuses_a_stream_of_another_dataflow():
    one, two = Dataflow("one"), Dataflow("two")
    with pytest.raises(ValueError, match="another dataflow"):
        one.from_iterable([1]).apply(Tag, inputs=(two.from_iterable([2]),))


def test_operator_methods_explain_use_outside_a_run():
    op = Numbered()
    with pytest.raises(RuntimeError, match="before the operator was wired"):
        op.emit([1])


# -- custom sources ------------------------------------------------------------------


class Countdown(Source):
    """Polled again while it returns True; emits one batch per poll."""

    def __init__(self, n, polls):
        self.n = n
        self.polls = polls

    def poll(self):
        self.polls.append(self.n)
        if self.n == 0:
            return False
        self.emit([self.n])
        self.n -= 1
        return True


class Inbox(Source):
    """Sleeps (poll returns None) until its feeder task wakes it."""

    def __init__(self, items, polls, *, chunk):
        self.items = items
        self.polls = polls
        self.chunk = chunk

    def open(self, context):
        self.buffer = []
        self.done = False
        context.kernel.spawn(self.feed(), name="inbox feeder")

    async def feed(self):
        for start in range(0, len(self.items), self.chunk):
            for _ in range(3):
                await asyncio.sleep(0)  # poll must not run while nothing changed
            self.buffer.extend(self.items[start : start + self.chunk])
            self.wake()
        await asyncio.sleep(0)
        self.done = True
        self.wake()

    def poll(self):
        self.polls.append(len(self.buffer))
        if self.buffer:
            batch, self.buffer = self.buffer, []
            self.emit(batch)
        return False if self.done else None


@pytest.mark.parametrize("n", [0, 1, 5])
def test_a_source_is_polled_while_it_returns_true(n):
    polls = []
    flow = Dataflow()
    out = flow.source(lambda: Countdown(n, polls), name="countdown").collect()
    run(flow)
    assert out.items == list(range(n, 0, -1))
    assert polls == [*range(n, 0, -1), 0]


@pytest.mark.parametrize("chunk", [1, 4, 100])
async def test_a_sleeping_source_is_polled_only_when_woken(chunk):
    items = list(range(10))
    polls = []
    flow = Dataflow()
    out = flow.source(lambda: Inbox(items, polls, chunk=chunk), name="inbox").map(lambda x: x * 3).collect()
    await run_async(flow)
    assert out.items == [x * 3 for x in items]
    chunks = math.ceil(len(items) / chunk)
    # the first poll, one per wake with data, one for the final wake.
    assert polls == [0] + [len(items[i : i + chunk]) for i in range(0, len(items), chunk)] + [0]
    assert len(polls) == chunks + 2


def test_a_sleeping_source_in_a_blocking_run():
    polls = []
    flow = Dataflow()
    out = flow.source(lambda: Inbox(list("abcdefg"), polls, chunk=3), name="inbox").collect()
    run(flow)
    assert out.items == list("abcdefg")
    assert polls == [0, 3, 3, 1, 0]


def test_source_takes_a_factory_not_an_instance():
    flow = Dataflow()
    with pytest.raises(TypeError, match="factory"):
        flow.source(Countdown(1, []), name="countdown")


def test_a_source_factory_must_return_a_source():
    flow = Dataflow()
    with pytest.raises(TypeError, match="Numbered is an Operator, not a Source"):  # a class: when built
        flow.source(Numbered, name="not a source")
    flow.source(lambda: Numbered(), name="not a source").collect()  # a function: what it makes, at run
    with pytest.raises(TypeError, match="not a Source"):
        run(flow)


# -- failures in custom operators --------------------------------------------------


class Explodes(Operator):
    def __init__(self, when):
        self.when = when

    def open(self, context):
        if self.when == "open":
            raise KeyError("no config")

    def on_batch(self, port, batch):
        if self.when == "on_batch":
            raise KeyError("bad batch")
        self.emit(batch)

    def on_end(self):
        if self.when == "on_end":
            raise KeyError("bad end")


@pytest.mark.parametrize("when", ["open", "on_batch", "on_end"])
def test_a_custom_operator_that_raises_is_named(when):
    flow = Dataflow()
    out = flow.from_iterable([1, 2, 3]).apply(lambda: Explodes(when), name="explodes").collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    err = info.value
    assert err.operator == "explodes (step 1)"
    # the class and the handler, e.g. "Explodes.on_batch" (maybe module-qualified)
    owner, _, handler = err.function.rpartition("Explodes.")
    assert owner in ("", f"{__name__}.")
    assert when in handler
    assert err.record is None
    assert isinstance(err.__cause__, KeyError)
    assert err.error.startswith("KeyError: ")
    assert out.items == []


def test_a_custom_source_whose_poll_raises_is_named():
    class Broken(Source):
        def poll(self):
            raise OSError("device gone")

    flow = Dataflow()
    flow.source(Broken, name="broken").collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.operator == "broken (step 0)"
    assert info.value.function.endswith("Broken.poll")
    assert isinstance(info.value.__cause__, OSError)


class EmitsOnce(Source):
    """Emits `batch` as it is given, then ends."""

    def __init__(self, batch):
        self.batch = batch

    def poll(self):
        self.emit(self.batch)
        return False


@pytest.mark.parametrize("batch, says", [
    ("order-1", "a str: 'order-1'"), (b"\x01\x02", "a bytes"), ({"order": 1}, "a dict"),
    (None, "a NoneType"), (7, "an? int"), ((n for n in range(3)), "a generator")])
@pytest.mark.parametrize("keyed", [False, True])
def test_a_custom_source_that_emits_a_record_instead_of_a_batch_is_named(batch, says, keyed):
    """`emit("order-1")` or `emit({"order": 1})` handed on its characters
    or keys as records, silently; `emit(None)` said only "has no len()"."""
    flow = Dataflow()
    stream = flow.source(lambda: EmitsOnce(batch), name="kafka orders")
    out = (stream.key_by(lambda r: r).count() if keyed else stream.map(lambda r: r)).collect()
    refused = f"emit\\(\\) takes a batch, a list of records, but was given {says}"
    with pytest.raises(OperatorError, match=refused) as info:
        run(flow)
    assert info.value.operator == "kafka orders (step 0)" and info.value.function.endswith("EmitsOnce.poll")
    assert out.items == []


@pytest.mark.parametrize("batch", [[1, 2], (1, 2), range(1, 3)])
def test_a_custom_source_may_emit_any_sequence_of_records(batch):
    flow = Dataflow()
    out = flow.source(lambda: EmitsOnce(batch), name="numbers").map(lambda r: r * 10).collect()
    run(flow)
    assert out.items == [10, 20]


# -- docstring examples --------------------------------------------------------------


import kernel as _kernel_api  # noqa: E402
import operators as _operators_api  # noqa: E402

# The public operators: every fluent method a user calls, and the window kinds.
_FLUENT = (_kernel_api.Dataflow, _kernel_api.Stream, _kernel_api.KeyedStream,
           _kernel_api.WindowedStream, _kernel_api.WindowResults)
_PUBLIC_OPERATORS = sorted(
    {f"{cls.__name__}.{name}": member for cls in _FLUENT for name, member in vars(cls).items()
     if callable(member) and not name.startswith("_")}.items()
) + [(name, getattr(_operators_api, name)) for name in ("Tumbling", "Sliding", "Session", "Window")]


@pytest.fixture(scope="module")
def _redis_server_url():
    path = Path(__file__).parents[1] / "_redis_server.py"
    spec = importlib.util.spec_from_file_location("_redis_server", path)
    server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(server)
    with server.redis_server() as url:
        yield url


@pytest.fixture
def redis_url(_redis_server_url):
    """A real redis-server, emptied, for the Redis connector's examples,
    which name the server they use `redis_url` (tests/_redis_server.py)."""
    import redis

    with redis.Redis.from_url(_redis_server_url) as client:
        client.flushall()
    return _redis_server_url


@pytest.mark.parametrize("name, member", _PUBLIC_OPERATORS, ids=[n for n, _ in _PUBLIC_OPERATORS])
def test_every_public_operator_has_a_runnable_example(name, member, redis_url):
    globs = dict(vars(importlib.import_module(member.__module__)), redis_url=redis_url)
    examples = doctest.DocTestFinder(recurse=False).find(member, name, globs=globs)
    assert examples and examples[0].examples, f"{name} has no >>> example in its docstring"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for example in examples:
        runner.run(example, out=lambda text: None)
    assert runner.summarize(verbose=False) == (0, len(examples[0].examples))


def test_every_docstring_example_of_the_library_runs(redis_url):
    import operators

    modules = [kernel.dataflow._api] + [
        importlib.import_module(m.name) for m in pkgutil.walk_packages(operators.__path__, "operators.")]
    with_examples = 0
    for module in modules:
        tests = doctest.DocTestFinder().find(module)
        with_examples += sum(1 for t in tests if t.examples)
        results = doctest.testmod(module, verbose=False, extraglobs={"redis_url": redis_url})
        assert results.failed == 0, module.__name__
    assert with_examples > len(_PUBLIC_OPERATORS)  # theirs, and the module and class examples


def test_apply_and_union_refuse_what_is_not_a_factory_or_a_stream():
    # These failed as bare errors from inside the library: "'Tagger' object is not callable"
    # when the run opened it, "Value after * must be an iterable, not Stream", "'list' object
    # has no attribute 'flow'".
    class Tagger(Operator):
        def on_batch(self, port, batch):
            self.emit(batch)

    flow = Dataflow()
    a, b = flow.from_iterable([1]), flow.from_iterable([2])
    with pytest.raises(TypeError, match="apply needs a factory"):
        a.apply(Tagger())
    with pytest.raises(TypeError, match=r"inputs= takes a sequence of streams"):
        a.apply(Tagger, inputs=b)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"union: an input must be a Stream .* got \[2\]"):
        a.union([2])  # type: ignore[arg-type]
    out = a.apply(Tagger, inputs=(b,)).collect()
    run(flow)
    assert sorted(out.items) == [1, 2]


class _AsyncBatch(Operator):
    async def on_batch(self, port, batch):
        self.emit(batch)


class _AsyncEnd(Operator):
    def on_batch(self, port, batch):
        pass

    async def on_end(self):
        self.emit([0])


class _EndReturnsInt(Operator):
    def on_batch(self, port, batch):
        self.emit(batch)

    def on_end(self):
        return 5


@pytest.mark.parametrize(("cls", "match"), [
    (_AsyncBatch, r"_AsyncBatch.on_batch is async, but the kernel calls it without awaiting it"),
    (_AsyncEnd, r"_AsyncEnd.on_end is async.*may return a task"),
    (_EndReturnsInt, r"_EndReturnsInt.on_end' raised TypeError: on_end returned 5"),
])
def test_an_async_handler_or_a_bad_on_end_result_is_an_error_naming_it(cls, match):
    # An async on_batch dropped every record in silence (a never-awaited coroutine); an async
    # on_end, or on_end returning 5, failed as "AttributeError: ... no attribute
    # 'add_done_callback'", blamed on on_watermark.
    flow = Dataflow()
    out = flow.from_iterable([1, 2]).apply(cls).collect()
    with pytest.raises((TypeError, OperatorError), match=match):
        run(flow)
    assert out.items == []


class _BatchReturned(Operator):
    def on_batch(self, port, batch):
        return [x * 2 for x in batch]  # self.emit(...) meant


class _WatermarkReturned(Operator):
    def on_batch(self, port, batch):
        self.emit(batch)

    def on_watermark(self, watermark):
        return [watermark]


class _TimerReturned(Operator):
    def on_batch(self, port, batch):
        self.schedule(1.0, batch)

    def on_timer(self, event_time, data):
        return data


class _IdleReturned(Operator):
    def on_batch(self, port, batch):
        self.emit(batch)

    def on_idle(self):
        return ["partials"]


class _EndReturnsList(Operator):
    def on_batch(self, port, batch):
        pass

    def on_end(self):
        return [3]


class _GoesIdle(Source):
    def poll(self):
        self.emit([1, 2])
        self.mark_idle()
        return False


def _returned_message(cls, handler, value, allowed="None"):
    return (f"function '{cls.__module__}.{cls.__qualname__}.{handler}' raised TypeError: {handler} "
            f"returned {value}: it must return {allowed}; records go on only through self.emit(batch), "
            "and what a handler returns is not passed on")


@pytest.mark.parametrize(("cls", "handler", "value"), [
    (_BatchReturned, "on_batch", "[2, 4]"),
    (_WatermarkReturned, "on_watermark", "[inf]"),
    (_TimerReturned, "on_timer", "[1, 2]"),
    (_IdleReturned, "on_idle", "['partials']"),
])
@pytest.mark.parametrize("chained", [True, False], ids=["chained", "through its inbox"])
def test_a_handler_that_returns_its_records_rather_than_emit_them_is_an_error_naming_it(
        cls, handler, value, chained):
    # `return [x * 2 for x in batch]` from on_batch (emit meant) lost every record in silence, and
    # so did a list returned by on_watermark, on_timer or on_idle. Chained, the source's poll
    # calls the operator; with two inputs, its activation, from its inbox.
    flow = Dataflow()
    stream = flow.source(_GoesIdle, name="idle")
    inputs = () if chained else (flow.source(_GoesIdle, name="idle too"),)
    out = stream.apply(cls, name="returns", inputs=inputs).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.operator.startswith("returns (step ")
    assert str(info.value) == f"operator {info.value.operator!r}: " + _returned_message(cls, handler, value)
    assert out.items == []


def test_on_end_returning_records_is_told_to_emit_them_or_return_a_future():
    flow = Dataflow()
    flow.from_iterable([1]).apply(_EndReturnsList, name="returns")
    with pytest.raises(OperatorError) as info:
        run(flow)
    allowed = "None, or a future (an asyncio task) that the step's end waits for"
    assert str(info.value).endswith(_returned_message(_EndReturnsList, "on_end", "[3]", allowed))


class _EndsInAThread(Operator):
    """Its on_end hands back a thread pool's future: work that waits for
    `release`, then raises `error` (None: succeeds)."""

    def __init__(self, pool, started, release, trace, error):
        self.pool, self.started, self.release = pool, started, release
        self.trace, self.error = trace, error

    def on_batch(self, port, batch):
        self.emit(batch)

    def on_end(self):
        return self.pool.submit(self._flush)

    def _flush(self):
        self.started.set()
        self.release.wait()
        self.trace.append("work done")
        if self.error is not None:
            raise self.error


class _TellsItsEnd(Operator):
    def __init__(self, trace):
        self.trace = trace

    def on_batch(self, port, batch):
        self.emit(batch)

    def on_end(self):
        self.trace.append("next step ended")


@pytest.mark.parametrize("error", [None, ValueError("bad")], ids=["succeeds", "fails"])
def test_on_end_may_return_a_thread_pools_future_the_kernels_loop_is_told_of(error):
    # Its done-callback runs in the pool's thread, which readied the step (or
    # failed the run) from there: the loop was not woken (the run hung in
    # its wait), and in asyncio's debug mode the call was refused outright.
    trace: list = []
    started, release = threading.Event(), threading.Event()

    async def scenario():
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            flow = Dataflow("ending")
            out = (flow.from_iterable([1, 2])
                   .apply(lambda: _EndsInAThread(pool, started, release, trace, error), name="ending")
                   .apply(lambda: _TellsItsEnd(trace), name="next").collect())
            running = asyncio.ensure_future(run_async(flow))
            while not started.is_set():
                await asyncio.sleep(0.001)
            assert trace == [] and not running.done()  # the step waits for the work
            release.set()
            try:
                await asyncio.wait_for(running, 10)
            finally:
                release.set()
        return out

    if error is None:
        out = asyncio.run(scenario(), debug=True)
        assert trace == ["work done", "next step ended"]
        assert out.items == [1, 2]
        return
    with pytest.raises(OperatorError) as info:
        asyncio.run(scenario(), debug=True)
    assert info.value.__cause__ is error
    assert str(info.value) == (f"operator 'ending (step 1)': function '{__name__}._EndsInAThread.on_end' "
                               "raised ValueError: bad")
    assert trace == ["work done"]


def test_on_round_returning_records_is_an_error_naming_it():
    class RoundReturned(Operator):
        def on_batch(self, port, batch):
            pass

        def on_round(self, round):
            return [round]

    flow = Dataflow()
    flow.from_iterable([1]).iterate(lambda s: (s.filter(lambda v: False), s.apply(RoundReturned)))
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert str(info.value).endswith(_returned_message(RoundReturned, "on_round", "[0]"))


class _PollReturned(Source):
    def poll(self):
        return [1, 2]  # self.emit([1, 2]) meant


async def test_a_poll_that_returns_its_records_rather_than_emit_them_is_an_error_naming_it():
    # A poll returning [1, 2] lost them, and the list, being true, meant "poll again":
    # the run never ended (the timeout fails the test rather than hang it).
    flow = Dataflow()
    out = flow.source(_PollReturned, name="returns").collect()
    with pytest.raises(OperatorError) as info:
        await asyncio.wait_for(run_async(flow), 10)
    assert str(info.value) == f"operator {info.value.operator!r}: " + _returned_message(
        _PollReturned, "poll", "[1, 2]", "True, False or None")
    assert info.value.operator.startswith("returns (step ") and out.items == []


class _EmitsOneRecord(Operator):
    def on_batch(self, port, batch):
        for record in batch:
            self.emit(record)  # emit([record]) meant


@pytest.mark.parametrize("records", [["ab"], [{"k": 1}]])
def test_an_operator_emitting_one_record_alone_is_told_to_emit_a_list(records):
    # emit("ab") from an operator came out downstream as 'a', 'b' (a dict as its keys), silently;
    # a source got a TypeError for the same mistake.
    flow = Dataflow()
    out = flow.from_iterable(records).apply(_EmitsOneRecord).collect()
    with pytest.raises(OperatorError, match=r"emit\(\) takes a batch.*emit\(\[record\]\)"):
        run(flow)
    assert out.items == []


@pytest.mark.parametrize("method", ["map", "filter", "flat_map", "inspect", "key_by", "sink"])
def test_a_value_that_is_not_a_function_is_refused_when_the_step_is_added(method):
    # map(5) was accepted; the run then failed opening the operator with "map needs a callable"
    # (for flat_map "flatmap", for key_by "keyby"), naming no step.
    stream = Dataflow().from_iterable([1])
    with pytest.raises(TypeError, match=rf"^{method}\(\) needs a function, got 5$"):
        getattr(stream, method)(5)


@pytest.mark.parametrize(("method", "args"), [("map_values", (5,)), ("reduce", (5,)), ("fold", (0, 5))])
def test_a_keyed_step_given_no_function_is_refused_when_it_is_added(method, args):
    keyed = Dataflow().from_iterable([1]).key_by(str)
    with pytest.raises(TypeError, match=rf"^{method}\(\) needs a function, got 5$"):
        getattr(keyed, method)(*args)


class _AsyncPoll(Source):
    async def poll(self):
        self.emit([1])
        return False


async def test_a_source_with_an_async_poll_is_refused_rather_than_polled_forever():
    # The never-awaited coroutine is true ("poll again"): the run polled it forever, emitting
    # nothing, and never ended. (The wait_for bounds the test on a library that still hangs.)
    flow = Dataflow()
    out = flow.source(_AsyncPoll, name="async poll").collect()
    with pytest.raises(TypeError, match=r"_AsyncPoll.poll is async.*self.context.kernel.spawn"):
        await asyncio.wait_for(run_async(flow), timeout=30)
    assert out.items == []
