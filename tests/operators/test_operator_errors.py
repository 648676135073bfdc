"""A user function that raises: the run fails with an `OperatorError` naming
the step, the function and the exact record, and nothing keeps running."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import math
import threading

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from kernel.operators._event_time import TIMESTAMP_HINT

from kernel import Dataflow, KernelProcessError, Operator, OperatorError, run, run_async
from kernel.dataflow._errors import UNHASHABLE_KEY, UNPICKLABLE_RECORD, describe_record
from net import Partitioner
from operators import Session, Sliding, Tumbling


class Boom(Exception):
    pass


class Failing:
    """Builds user functions that raise on one chosen value and remember the
    exception they raised (to check `__cause__` by identity)."""

    def __init__(self, bad):
        self.bad = bad
        self.raised: list[BaseException] = []

    def _raise(self, x):
        exc = Boom(f"cannot handle {x!r}")
        self.raised.append(exc)
        raise exc

    def unary(self):
        def parse(x):
            if x == self.bad:
                self._raise(x)
            return x

        return parse

    def binary(self):
        def combine(acc, x):
            if x == self.bad:
                self._raise(x)
            return acc + x

        return combine


def _parity(x):
    return x % 2


def _const(x):
    return "k"


def _listed(fn):
    def parse(x):  # a flat_map function that calls the failing one
        return [fn(x)]

    return parse


# step -> (the user function for a `Failing`, how to add the step, the step's
# name, the record reported for value `v`: keyed steps see `(key, value)`).
STEPS = {
    "map": (Failing.unary, lambda s, f: s.map(f), "map(parse)", lambda v: v),
    "filter": (Failing.unary, lambda s, f: s.filter(f), "filter(parse)", lambda v: v),
    "flat_map": (
        lambda failing: _listed(failing.unary()),
        lambda s, f: s.flat_map(f),
        "flat_map(parse)",
        lambda v: v,
    ),
    "inspect": (Failing.unary, lambda s, f: s.inspect(f), "inspect(parse)", lambda v: v),
    "sink": (Failing.unary, lambda s, f: s.sink(f), "sink(parse)", lambda v: v),
    "key_by": (Failing.unary, lambda s, f: s.key_by(f), "key_by(parse)", lambda v: v),
    "map_values": (
        Failing.unary,
        lambda s, f: s.key_by(_parity).map_values(f),
        "map_values(parse)",
        lambda v: (_parity(v), v),
    ),
    "reduce": (
        Failing.binary,
        lambda s, f: s.key_by(_const).reduce(f),
        "reduce(combine)",
        lambda v: ("k", v),
    ),
    "fold": (
        Failing.binary,
        lambda s, f: s.key_by(_const).fold(0, f),
        "fold(combine)",
        lambda v: ("k", v),
    ),
}


def failing_flow(step, data, bad, batch_size):
    """A flow `source -> step` (-> collect) whose function raises on `bad`;
    returns (flow, failing, the user function)."""
    failing = Failing(bad)
    make_fn, build, _, _ = STEPS[step]
    fn = make_fn(failing)
    flow = Dataflow("failing")
    stream = build(flow.from_iterable(data, batch_size=batch_size), fn)
    if stream is not None:
        stream.collect()
    return flow, failing, fn


@pytest.mark.parametrize("step", list(STEPS))
def test_error_names_step_function_and_the_seventh_record(step):
    data = list(range(100, 120))  # one batch of 20; the 7th record fails
    flow, failing, fn = failing_flow(step, data, bad=106, batch_size=20)
    with pytest.raises(OperatorError) as info:
        run(flow)
    err = info.value
    _, _, label, record_of = STEPS[step]
    step_index = 2 if step in ("map_values", "reduce", "fold") else 1
    assert err.operator == f"{label} (step {step_index})"
    assert err.function in (fn.__qualname__, f"{__name__}.{fn.__qualname__}")
    assert err.function.rsplit(".", 1)[-1] == label[label.index("(") + 1 : -1]
    assert err.record == repr(record_of(106))
    assert len(failing.raised) == 1
    assert err.__cause__ is failing.raised[0]
    assert err.error == "Boom: cannot handle 106"
    assert str(err) == (
        f"operator {err.operator!r}: function {err.function!r} raised Boom: cannot handle 106"
        f"\n  on record: {err.record}"
    )


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from(list(STEPS)),
    st.integers(1, 60),
    st.data(),
    st.one_of(st.just(1), st.integers(1, 15), st.integers(60, 500)),
)
def test_error_reports_exactly_the_failing_record(step, n, data, batch_size):
    # reduce's function first runs on a key's second value.
    low = 1 if step == "reduce" else 0
    assume(n > low)
    bad = data.draw(st.integers(low, n - 1), label="bad")
    flow, failing, _ = failing_flow(step, list(range(n)), bad, batch_size)
    with pytest.raises(OperatorError) as info:
        run(flow)
    _, _, label, record_of = STEPS[step]
    assert info.value.record == repr(record_of(bad))
    assert info.value.operator.startswith(label)
    assert info.value.__cause__ is failing.raised[0]


def test_flat_map_names_the_record_whose_result_is_not_iterable():
    def expand(x):
        return x if x == 6 else [x]

    flow = Dataflow()
    flow.from_iterable(range(20), batch_size=8).flat_map(expand).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.operator == "flat_map(expand) (step 1)"
    assert info.value.record == "6"
    assert isinstance(info.value.__cause__, TypeError)


def test_flat_map_names_the_record_whose_iterable_raises_while_read():
    boom = Boom("half way")

    def expand(x):
        yield x
        if x == 6:
            raise boom
        yield -x

    flow = Dataflow()
    out = flow.from_iterable(range(20), batch_size=20).flat_map(expand).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.operator == "flat_map(expand) (step 1)"
    assert info.value.function.endswith("expand")
    assert info.value.record == "6"
    assert info.value.__cause__ is boom
    assert out.items == []


@pytest.mark.parametrize("step", ["map", "filter", "flat_map", "key_by", "map_values", "inspect", "sink"])
def test_a_failure_in_a_later_batch_reports_that_batchs_record(step):
    flow, _, _ = failing_flow(step, list(range(45)), bad=26, batch_size=10)
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.record == repr(STEPS[step][3](26))


async def test_errors_raise_the_same_way_from_run_async():
    flow, failing, _ = failing_flow("map", list(range(30)), bad=13, batch_size=7)
    with pytest.raises(OperatorError) as info:
        await run_async(flow)
    assert info.value.operator == "map(parse) (step 1)"
    assert info.value.record == "13"
    assert info.value.__cause__ is failing.raised[0]


def test_count_names_an_unhashable_key():
    flow = Dataflow()
    flow.from_iterable(range(20), batch_size=20).key_by(lambda x: [x] if x == 6 else x).count().collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    err = info.value
    assert err.operator == "count (step 2)"
    assert err.record == "([6], 6)"
    assert isinstance(err.__cause__, TypeError)
    assert err.function == "hash(key)"


def test_sum_names_values_that_do_not_add():
    values = [1] * 6 + ["one"] + [1] * 13
    flow = Dataflow()
    flow.from_iterable(values, batch_size=20).key_by(lambda v: "k").sum().collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    err = info.value
    assert err.operator == "sum (step 2)"
    assert err.record == "('k', 'one')"
    assert isinstance(err.__cause__, TypeError)
    assert err.function == "operator.add"


def run_and_get_error(flow, cores):
    """The OperatorError a run ends with; on several kernels, the failed
    kernel's (the cause of the KernelProcessError)."""
    if cores == 1:
        with pytest.raises(OperatorError) as info:
            run(flow)
        return info.value
    with pytest.raises(KernelProcessError) as info:
        run(flow, cores=cores)
    assert isinstance(info.value.__cause__, OperatorError), info.value
    return info.value.__cause__


# -- a key that cannot be hashed -------------------------------------------------------


def _list_key_at_6(x):
    return [x] if x == 6 else x


def _add(a, b):
    return a + b


# aggregate -> (how to add it after key_by, its step's name, whether it
# pre-aggregates per kernel before the exchange on several kernels)
KEYED_STEPS = {
    "count": (lambda k: k.count(), "count (step 2)", True),
    "sum": (lambda k: k.sum(), "sum (step 2)", True),
    "reduce": (lambda k: k.reduce(_add), "reduce(_add) (step 2)", True),
    "fold": (lambda k: k.fold(0, _add), "fold(_add) (step 2)", False),
    "tumbling sum": (lambda k: k.window(Tumbling(4.0)).sum(), "window sum Tumbling(4.0) (step 2)", True),
    "sliding count": (lambda k: k.window(Sliding(4.0, 2.0)).count(),
                      "window count Sliding(4.0, 2.0) (step 2)", True),
    "session collect": (lambda k: k.window(Session(1.5)).collect(),
                        "window collect Session(1.5) (step 2)", False),
    "join": (lambda k: k.join(k.flow.from_iterable(range(20), timestamp=float).key_by(str), Tumbling(4.0)),
             "join Tumbling(4.0) (step 4)", False),
}


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("step", list(KEYED_STEPS))
def test_an_unhashable_key_is_named_as_such_by_every_keyed_step(step, cores):
    # Whatever runs into the key first (the aggregate's `+` or the user's
    # function on one kernel, the partial aggregate or the exchange on two),
    # the error says the key cannot be hashed, shows the record and says
    # what a key must be; record 6 is read by kernel 0 on two kernels.
    add_step, label, pre_aggregates = KEYED_STEPS[step]
    flow = Dataflow()
    keyed = flow.from_iterable(range(20), timestamp=float).key_by(_list_key_at_6, name="key_by(key)")
    add_step(keyed).collect()
    err = run_and_get_error(flow, cores)
    if cores == 1:
        assert err.operator == label
    elif pre_aggregates:
        assert err.operator == f"{label}, partial before the exchange"
    else:
        assert err.operator == "key_by(key) (step 1)"  # its output cannot be sent to the key's owner
    assert (err.function, err.record, err.hint) == ("hash(key)", "([6], 6)", UNHASHABLE_KEY)
    assert err.error == "TypeError: unhashable type: 'list'"
    assert str(err).endswith(f"on record: ([6], 6)\n  {UNHASHABLE_KEY}")


# -- records that cannot cross kernels -------------------------------------------------


class Handle:
    """A record field that cannot be pickled (it holds a lock), with a repr
    that is the same in every process."""

    def __init__(self, n):
        self.n = n
        self.lock = threading.Lock()

    def __repr__(self):
        return f"Handle({self.n})"


def _with_handle_at_13(x):
    return (x, Handle(x) if x == 13 else None)


def _next_number(record):
    return record[0] + 1


def _plus_two(record):
    return record[0] + 2


def test_a_record_that_cannot_be_pickled_names_the_step_whose_output_crosses_kernels():
    # Record 13 is read by kernel 1; its key 15 belongs to kernel 0, so it
    # must cross, with the other records of its batch for kernel 0.
    from kernel.dataflow._key_groups import default_key_groups, owner_table

    assert Partitioner(2, owner_table(2, default_key_groups(2))).owner(15) == 0
    flow = Dataflow()
    stream = flow.from_iterable(range(20)).map(_with_handle_at_13)
    stream.key_by(_plus_two).collect()
    err = run_and_get_error(flow, 2)
    assert err.operator == "key_by(_plus_two) (step 2)"
    assert err.function == "pickle.dumps"
    assert err.record == "(15, (13, Handle(13)))"
    assert err.error == "TypeError: cannot pickle '_thread.lock' object"
    assert err.hint == UNPICKLABLE_RECORD
    assert "must be picklable" in str(err)


def test_a_record_that_cannot_be_pickled_is_fine_where_it_does_not_cross():
    flow = Dataflow()
    out = flow.from_iterable(range(20)).map(_with_handle_at_13).key_by(_next_number).collect()
    run(flow)
    assert [key for key, _ in out.items] == list(range(1, 21))


# -- timestamps that are not finite numbers --------------------------------------------


def _stamp(event):
    return event[1]


@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, -math.inf, "noon", 10**400, True],
    ids=["nan", "inf", "-inf", "str", "int-beyond-float", "bool"])
def test_a_timestamp_that_is_not_a_finite_number_is_refused_at_the_source(bad):
    # Unchecked, NaN reached a window as `cannot convert float NaN to
    # integer`; and without a window downstream it passed silently.
    events = [("a", 1.0 + i) for i in range(30)]
    events[17] = ("bad", bad)
    flow = Dataflow()
    flow.from_iterable(events, batch_size=10, timestamp=_stamp).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    err = info.value
    assert err.operator == "from_iterable (step 0)"
    assert err.function.endswith("_stamp")
    assert err.verb == "returned"
    assert (err.error, err.record) == (describe_record(bad), describe_record(("bad", bad)))
    assert err.hint == TIMESTAMP_HINT
    assert str(err) == (f"operator 'from_iterable (step 0)': function {err.function!r} returned "
                        f"{err.error}\n  on record: {err.record}\n  {TIMESTAMP_HINT}")


class _Stop(BaseException):
    """A user's own control-flow exception, outside the Exception hierarchy."""


class _Unreadable(datetime.datetime):
    """A datetime whose `timestamp()` raises a BaseException that is not an Exception."""

    def timestamp(self):
        raise _Stop("no timestamp")

    def __repr__(self):
        return "_Unreadable()"


def test_a_timestamp_whose_reading_raises_a_base_exception_is_refused_naming_the_record():
    """Its Stop went past the check's `except Exception`: the run failed
    naming the source's poll, with no record and no word of timestamps."""
    events = [("a", 1.0 + i) for i in range(30)]
    events[17] = ("bad", _Unreadable(2024, 1, 1))
    flow = Dataflow()
    flow.from_iterable(events, batch_size=10, timestamp=_stamp).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert str(info.value) == (f"operator 'from_iterable (step 0)': function '{__name__}._stamp' returned "
                               f"_Unreadable()\n  on record: ('bad', _Unreadable())\n  {TIMESTAMP_HINT}")


def test_finite_timestamps_whose_sum_overflows_are_accepted():
    # The check sums a batch's timestamps: an overflow to inf must not be
    # taken for an infinite timestamp.
    flow = Dataflow()
    out = flow.from_iterable([1e308, 1.5e308, 1.7e308], timestamp=float).collect()
    run(flow)
    assert out.items == [1e308, 1.5e308, 1.7e308]


# -- StopIteration must never end a batch quietly ------------------------------------


def stop_at(bad):
    def parse(x):
        if x == bad:
            raise StopIteration
        return x

    return parse


STOP_STEPS = {
    "map": lambda s, f: s.map(f),
    "filter": lambda s, f: s.filter(f),
    "flat_map": lambda s, f: s.flat_map(_listed(f)),
    "key_by": lambda s, f: s.key_by(f),
    "map_values": lambda s, f: s.key_by(_parity).map_values(f),
    "inspect": lambda s, f: s.inspect(f),
    "sink": lambda s, f: s.sink(f),
    "fold": lambda s, f: s.key_by(_const).fold(0, lambda acc, v: f(v)),
}


@pytest.mark.parametrize("step", list(STOP_STEPS))
@pytest.mark.parametrize(
    ("bad", "batch_size"),
    [(3, 10), (0, 10), (9, 10), (5, 1)],
    ids=["middle", "first", "last-of-batch", "batch-of-one"],
)
def test_stop_iteration_in_a_user_function_fails_the_run(step, bad, batch_size):
    # StopIteration ends `map()`/`filter()` early instead of propagating: the
    # operator must turn it into an error, whichever record of the batch raised it.
    flow = Dataflow()
    out = STOP_STEPS[step](flow.from_iterable(range(20), batch_size=batch_size), stop_at(bad))
    if out is not None:
        out.collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    err = info.value
    assert "StopIteration" in err.error
    expected = {"map_values": (_parity(bad), bad), "fold": ("k", bad)}.get(step, bad)
    assert err.record == repr(expected)


# -- what the error shows of the record ----------------------------------------------


def test_a_long_record_repr_is_truncated():
    huge = "x" * 100_000

    def parse(x):
        raise ValueError("too long")

    flow = Dataflow()
    flow.from_iterable([huge]).map(parse).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    record = info.value.record
    assert len(record) <= 210
    assert record.startswith("'xxxx") and record.endswith("xxxx'")
    assert "..." in record
    assert len(str(info.value)) < 500


def test_a_big_container_record_is_truncated():
    big = {"items": list(range(10_000)), "name": "y" * 5000}

    def parse(x):
        raise ValueError("nope")

    flow = Dataflow()
    flow.from_iterable([big]).map(parse).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert len(info.value.record) < 400
    assert info.value.record.startswith("{'items': [0, 1, 2")


def test_a_record_whose_repr_raises_does_not_hide_the_error():
    class Opaque:
        def __repr__(self):
            raise RuntimeError("no repr")

    def parse(x):
        raise ValueError("real problem")

    flow = Dataflow()
    flow.from_iterable([Opaque()]).map(parse).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    # reprlib falls back to a placeholder naming the type.
    assert info.value.record.startswith("<Opaque ")
    assert info.value.error == "ValueError: real problem"


class StatusError(Exception):
    """An exception whose message cannot be made: its __str__ returns its
    first argument, and it is raised with a number."""

    def __str__(self):
        return self.args[0]


def status(x):
    if x == 2:
        raise StatusError(404)
    return x


async def statuses():
    yield 1
    raise StatusError(500)


class Refusing(Operator):
    def on_batch(self, port, batch):
        raise StatusError(409)


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize(("build", "step", "function", "record"), [
    (lambda s: s.map(status), "map(status) (step 1)", "status", "2"),
    # fused with the map before it: the same step as apart
    (lambda s: s.map(lambda x: x).map(status), "map(status) (step 2)", "status", "2"),
    (lambda s: s.map(lambda x: x).filter(status), "filter(status) (step 2)", "status", "2"),
    (lambda s: s.apply(Refusing), "Refusing (step 1)", "Refusing.on_batch", None),
])
def test_an_exception_whose_message_raises_is_still_named_where_it_came_from(build, step, function,
                                                                              record, cores):
    """str() of the user's exception raised while the error was being made:
    the run failed naming the library's handler ('...Map.on_batch'), no
    record, and fused or behind a user operator another step altogether."""
    flow = Dataflow()
    build(flow.from_iterable([1, 2, 3])).collect()
    with pytest.raises((OperatorError, KernelProcessError)) as info:
        run(flow, cores=cores)
    error = info.value.__cause__ if cores > 1 else info.value
    assert isinstance(error, OperatorError)
    assert error.operator == step
    assert error.function.rpartition("test_operator_errors.")[2] == function
    assert error.record == record
    assert error.error.startswith("StatusError: <exception str() failed> StatusError(")
    if cores == 1:
        assert isinstance(error.__cause__, StatusError)


def test_an_async_source_whose_exception_message_raises_is_named():
    flow = Dataflow()
    flow.from_async_iterable(statuses).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.operator == "from_async_iterable (step 0)"
    assert info.value.error == "StatusError: <exception str() failed> StatusError(500)"


def test_a_long_error_message_is_shortened():
    def parse(x):
        raise ValueError("m" * 5000)

    flow = Dataflow()
    flow.from_iterable([1]).map(parse).collect()
    with pytest.raises(OperatorError) as info:
        run(flow)
    assert info.value.error.startswith("ValueError: mmm")
    assert len(info.value.error) <= 303
    assert len(str(info.value.__cause__)) == 5000  # the cause keeps the full message


def test_operator_error_pickles_with_its_fields():
    import pickle

    err = OperatorError("map(parse) (step 1)", "parse", "7", "ValueError: x")
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.operator, copy.function, copy.record, copy.error) == (
        "map(parse) (step 1)",
        "parse",
        "7",
        "ValueError: x",
    )
    assert str(copy) == str(err)


# -- nothing keeps running after a failure --------------------------------------------


def test_nothing_after_the_failing_batch_reaches_downstream():
    pulled = []
    reached = []

    def source():
        for i in range(1000):
            pulled.append(i)
            yield i

    def parse(x):
        if x == 26:
            raise ValueError("bad")
        return x * 2

    starts = []  # each batch's first record, as map got them

    class Starts(Operator):
        def on_batch(self, port, batch):
            starts.append(batch[0])
            self.emit(batch)

    flow = Dataflow()
    flow.from_iterable(source(), batch_size=10).apply(Starts).map(parse).sink(reached.append)
    with pytest.raises(OperatorError):
        run(flow)
    # map emits a batch only once all of it went through: the sink saw whole
    # batches from before the failing one, in order, nothing later. (The
    # batches are of 10 records or fewer: a source asks for what fits in
    # its slice, and a loaded machine's slice held 9 in CI.)
    failing = max(start for start in starts if start <= 26)
    assert reached == [2 * x for x in range(len(reached))]
    assert len(reached) in [start for start in starts if start <= failing]
    # The source stopped: it did not read the whole input.
    assert len(pulled) < 1000


async def test_a_failure_stops_an_endless_source_promptly():
    pulled = itertools.count()
    consumed = []

    async def endless():
        while True:
            yield next(pulled)
            await asyncio.sleep(0)

    def parse(x):
        if x == 50:
            raise ValueError("bad")
        return x

    flow = Dataflow()
    flow.from_async_iterable(endless, batch_size=8).map(parse).sink(consumed.append)
    with pytest.raises(OperatorError) as info:
        await asyncio.wait_for(run_async(flow), timeout=10)
    assert info.value.record == "50"
    after_failure = (next(pulled), len(consumed))
    for _ in range(50):
        await asyncio.sleep(0)
    # The reader task was cancelled and no operator ran since.
    assert (next(pulled), len(consumed)) == (after_failure[0] + 1, after_failure[1])
    assert consumed == list(range(len(consumed)))
    assert len(consumed) <= 50


async def test_a_failure_stops_a_sibling_branch_on_an_endless_iterable():
    sibling = []

    def parse(x):
        if x == 5000:
            raise ValueError("bad")
        return x

    flow = Dataflow()
    s = flow.from_iterable(itertools.count(), batch_size=100)
    s.map(parse).collect()
    s.sink(sibling.append)
    with pytest.raises(OperatorError) as info:
        await asyncio.wait_for(run_async(flow), timeout=10)
    assert info.value.record == "5000"
    seen = len(sibling)
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(sibling) == seen
    assert sibling == list(range(seen))


async def test_host_loop_survives_a_failed_flow():
    flow, _, _ = failing_flow("map", list(range(10)), bad=3, batch_size=2)
    with pytest.raises(OperatorError):
        await run_async(flow)
    # The loop is fine and a new flow runs on it.
    ok = Dataflow()
    out = ok.from_iterable(range(3)).map(str).collect()
    await run_async(ok)
    assert out.items == ["0", "1", "2"]


# -- a window's function that runs when the window closes -----------------------------


class Unlucky(Exception):
    pass


def _add_unless_13(acc, value):
    if 13 in (acc, value):  # whichever order the values come in (on two kernels)
        raise Unlucky("13")
    return acc + value


def _rank_unless_13(value):
    if value == 13:
        raise Unlucky("13")
    return value


# aggregation -> (how to add it to a windowed stream, its step's label part, the function's name)
CLOSING_STEPS = {
    "reduce": (lambda w: w.reduce(_add_unless_13), "window reduce(_add_unless_13)", "_add_unless_13"),
    "fold": (lambda w: w.fold(0, _add_unless_13), "window fold(_add_unless_13)", "_add_unless_13"),
    "top": (lambda w: w.top(2, by=_rank_unless_13), "window top(2)", "_rank_unless_13"),
}


@pytest.mark.parametrize("cores", [1, 2])
@pytest.mark.parametrize("window", [Session(1.0), Tumbling(1.0)])
@pytest.mark.parametrize("step", list(CLOSING_STEPS))
def test_a_windows_function_names_its_record_also_when_it_runs_as_the_window_closes(step, window, cores):
    # Sessions keep the values of a reduce, fold or top (no merge) and run
    # the function on them when the session closes, on a watermark: a
    # failure there named the step and the function but no record. And a
    # tumbling reduce on two kernels runs the function where the kernels'
    # partials meet, on `(key, window number, partial)`: that named an
    # internal number as if it were the record's.
    add_step, label, function = CLOSING_STEPS[step]
    flow = Dataflow()
    events = [("k", 0.1, 1), ("k", 0.5, 13), ("k", 0.7, 2)]
    values = flow.from_iterable(events, timestamp=lambda e: e[1]).key_by(lambda e: e[0])
    add_step(values.map_values(lambda e: e[2]).window(window)).collect()
    err = run_and_get_error(flow, cores)
    assert err.operator.startswith(f"{label} {window!r} (step 3)")
    assert err.function.endswith(function)
    assert err.error == "Unlucky: 13"
    if cores == 1 or step != "reduce":
        assert err.record == "('k', 13)"
    else:  # on two kernels a reduce may meet 13 first, as its accumulator
        assert err.record in ("('k', 1)", "('k', 2)", "('k', 3)", "('k', 13)")
    if cores == 1:  # (a kernel process's error comes back without its cause)
        assert isinstance(err.__cause__, Unlucky)
