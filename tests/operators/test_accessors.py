"""User functions that only read their record (`lambda e: e[1]`, `lambda e:
e.x`, `lambda w: w`) run as C getters, or not at all (`operators/_accessors.py`).
What a user sees must not change: every step that calls a function per
record gives the same results and the same errors (step, function, record)
as with a function that does the same but is not recognised, and the
results equal a plain loop's."""

from __future__ import annotations

import math
import sys
import threading
from collections import Counter
from operator import attrgetter, itemgetter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel.operators import KeyBy

from kernel import Dataflow, KernelError, KernelProcessError, run
from operators import Tumbling
from operators._accessors import IDENTITY, accessor


class Point:
    def __init__(self, x) -> None:
        self.x = x


def constant_index(e):
    return e[1]


@pytest.mark.parametrize("fn, record, expected", [
    (lambda e: e, (1, 2), (1, 2)),
    (constant_index, (1, 2), 2),
    (lambda e: e[-1], (1, 2, 3), 3),
    (lambda e: e["k"], {"k": 5}, 5),
    (lambda e: e[(1, 2)], {(1, 2): "t"}, "t"),
    (lambda e: e.x, Point(7), 7),
    (lambda e: (e[2], e[0]), (1, 2, 3), (3, 1)),
    (lambda e: (e.x, e.x), Point(8), (8, 8)),
])
def test_a_plain_read_is_recognised_and_does_what_the_function_does(fn, record, expected):
    form = accessor(fn)
    assert form is not None
    got = record if form is IDENTITY else form(record)
    assert got == fn(record) == expected
    if form is not IDENTITY:
        assert type(form) in (itemgetter, attrgetter)


FIELD = 1
offset = 1


def closure_over(i):
    return lambda e: e[i]


def decorated(fn):
    def wrapper(e):
        return fn(e)
    return wrapper


class Getter:
    def __call__(self, e):
        return e[0]


async def coroutine(e):
    return e


def generator(e):
    yield e


@pytest.mark.parametrize("fn", [
    lambda e: e[1:2],  # a slice: more than one load
    lambda e: (e[0],),  # itemgetter(0) would give the item, not a 1-tuple
    lambda e: (e[0], e.x),  # an index and an attribute
    lambda e: (e, e[0]),
    lambda e: [e[0], e[1]],
    lambda e: e.x.y,
    lambda e: (1, 2),
    lambda e, k=1: e[k],  # a default parameter
    lambda e: e[FIELD],  # a global: it may change while the flow runs
    closure_over(1),
    lambda e: e[0][1],
    lambda e: e[0] + offset,
    lambda e: e.upper(),
    lambda e: -e,
    lambda *e: e,
    lambda e, f: e,
    lambda e, *, f=0: e,
    lambda: 1,
    lambda e: 1,
    lambda e: None,
    decorated(lambda e: e[0]),
    Getter(),
    str.split,
    len,
    itemgetter(0),
    "abc".startswith,
    coroutine,
    generator,
])
def test_anything_else_runs_as_written(fn):
    assert accessor(fn) is None


# Each site that calls a function per record, with a recognised function and
# with its twin that is not (an unused default parameter: two parameters),
# both lambdas so that errors name them alike.
READS = {
    "identity": (lambda e: e, lambda e, _=None: e),
    "first": (lambda e: e[0], lambda e, _=None: e[0]),
    "second": (lambda e: e[1], lambda e, _=None: e[1]),
    "last": (lambda e: e[-1], lambda e, _=None: e[-1]),
    "swapped": (lambda e: (e[1], e[0]), lambda e, _=None: (e[1], e[0])),
}


def pipeline(site: str, flow, records, fn):
    """The flow's output for `site`, reading records with `fn` (and with
    READS' other functions where the site needs a second one)."""
    first = READS["first"][0] if fn is READS["first"][0] else READS["first"][1]
    if site == "map":
        return flow.from_iterable(records, batch_size=5).map(fn).collect()
    if site == "filter":
        return flow.from_iterable(records, batch_size=5).filter(fn).collect()
    if site == "flat_map":
        return flow.from_iterable(records, batch_size=5).flat_map(fn).collect()
    if site == "key_by":  # apart: a collect after it fuses nothing
        return flow.from_iterable(records, batch_size=5).key_by(fn).collect()
    if site == "map_values":
        return flow.from_iterable(records, batch_size=5).key_by(first).map_values(fn).collect()
    if site == "chain":  # fused into one comprehension
        return (flow.from_iterable(records, batch_size=5).map(fn).filter(fn).key_by(first)
                .map_values(fn).collect())
    if site == "count":  # key_by fused into the aggregate
        return flow.from_iterable(records, batch_size=5).key_by(fn).count().collect()
    if site == "columns":  # key_by and map_values fused into the aggregate as columns
        return flow.from_iterable(records, batch_size=5).key_by(first).map_values(fn).count().collect()
    # after an aggregate, whose results are (key, first record) pairs:
    if site == "map_values_apart":  # map_values on its own (nothing before it to fuse with)
        return (flow.from_iterable(records, batch_size=5).key_by(first).reduce(keep_first)
                .map_values(fn).collect())
    if site == "values_of_pairs":  # map_values fused into the aggregate after it, without key_by
        return (flow.from_iterable(records, batch_size=5).key_by(first).reduce(keep_first)
                .map_values(fn).reduce(keep_first).collect())
    raise AssertionError(site)


def keep_first(a, _b):
    return a


SITES = ("map", "filter", "flat_map", "key_by", "map_values", "chain", "count", "columns",
         "map_values_apart", "values_of_pairs")


def outcome(site: str, records, fn, cores: int = 1):
    flow = Dataflow("accessors")
    out = pipeline(site, flow, records, fn)
    try:
        run(flow, cores=cores)
    except KernelError as exc:
        error = exc.__cause__ if isinstance(exc, KernelProcessError) else exc
        return ("error", str(error).split(" (kernel ")[0])
    return ("ok", sorted(out.items, key=repr))


def brute_force(site: str, records, read):
    """What each site gives, by a plain loop (None: an error is expected)."""
    try:
        if site == "map":
            out = [read(r) for r in records]
        elif site == "filter":
            out = [r for r in records if read(r)]
        elif site == "flat_map":
            out = [x for r in records for x in read(r)]
        elif site == "key_by":
            out = [(read(r), r) for r in records]
        elif site == "map_values":
            out = [(r[0], read(r)) for r in records]
        elif site == "chain":
            mapped = [read(r) for r in records]
            out = [(m[0], read(m)) for m in mapped if read(m)]
        elif site == "count":
            out = list(Counter(read(r) for r in records).items())
        elif site in ("map_values_apart", "values_of_pairs"):
            firsts: dict = {}
            for r in records:
                firsts.setdefault(r[0], r)
            out = [(k, read(r)) for k, r in firsts.items()]
        else:  # "columns": map_values' values are read, then counted by key
            values = [read(r) for r in records]
            out = list(Counter(r[0] for r, _ in zip(records, values)).items())
    except (IndexError, TypeError):
        return None
    return sorted(out, key=repr)


records_strategy = st.lists(
    st.one_of(st.tuples(st.integers(0, 3), st.integers(0, 3)),
              st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)),
              st.tuples(st.integers(0, 3)),
              st.just(())),
    max_size=30)


@settings(max_examples=40, deadline=None)
@given(records=records_strategy, site=st.sampled_from(SITES), read=st.sampled_from(sorted(READS)))
def test_every_site_gives_the_same_results_and_errors_as_a_function_it_calls(records, site, read):
    recognised, twin = READS[read]
    assert accessor(recognised) is not None and accessor(twin) is None
    fast = outcome(site, records, recognised)
    slow = outcome(site, records, twin)
    assert fast == slow
    if fast[0] == "ok":
        expected = brute_force(site, records, twin)
        assert expected is not None and fast[1] == expected, (fast, expected)


@pytest.mark.parametrize("read", sorted(READS))
@pytest.mark.parametrize("site", SITES)
def test_every_site_and_read_agrees_with_a_plain_loop_on_nested_records(site, read):
    # e[0] and e[1] are pairs themselves: every read suits every site
    records = [((i % 3, i % 4), (i % 5, i)) for i in range(23)]
    recognised, twin = READS[read]
    fast = outcome(site, records, recognised)
    assert fast == outcome(site, records, twin)
    assert fast == ("ok", brute_force(site, records, twin)), fast


@pytest.mark.parametrize("site", SITES)
def test_a_record_without_the_field_is_named_with_the_function_and_its_step(site):
    records = [(1, 2), (3, 4), (5,), (6, 7)]
    fast = outcome(site, records, READS["second"][0])
    assert fast == outcome(site, records, READS["second"][1])
    assert fast[0] == "error" and "<lambda>' raised IndexError" in fast[1], fast
    assert "on record: (5,)" in fast[1] or "on record: (5, (5,))" in fast[1], fast


def events(n: int):
    return [(f"k{i % 7}", i / 64, i % 5) for i in range(n)]


def windowed_sum(records, timestamp, key, value, cores: int):
    flow = Dataflow("windowed")
    sums = (flow.from_iterable(records, timestamp=timestamp, batch_size=50)
            .key_by(key).map_values(value).window(Tumbling(1.0)).sum())
    out = sums.collect()
    run(flow, cores=cores)
    return sorted((k, w.start, total) for k, w, total in out.items)


@pytest.mark.parametrize("cores", [1, 2])
def test_a_windowed_sum_with_recognised_reads_equals_a_plain_loop(cores):
    records = events(2_000)
    got = windowed_sum(records, lambda e: e[1], lambda e: e[0], lambda e: e[2], cores)
    expected: Counter = Counter()
    for key, t, value in records:
        expected[(key, float(math.floor(t)))] += value
    assert got == sorted((k, start, total) for (k, start), total in expected.items())
    assert got == windowed_sum(records, lambda e, _=0: e[1], lambda e, _=0: e[0], lambda e, _=0: e[2], cores)


def test_a_timestamp_read_that_fails_names_the_record():
    flow = Dataflow()
    flow.from_iterable([(1, 0.5), (2,)], timestamp=lambda e: e[1]).collect()
    with pytest.raises(KernelError, match=r"(?s)raised IndexError.*on record: \(2,\)"):
        run(flow)


class StopsAtThree(tuple):
    """A record whose `[0]` raises StopIteration when it holds 3: `map()`
    would end there silently."""

    def __getitem__(self, index):
        if tuple.__getitem__(self, 0) == 3:
            raise StopIteration("no field")
        return tuple.__getitem__(self, index)


@pytest.mark.parametrize("site", SITES)
def test_a_read_that_raises_stop_iteration_fails_as_the_function_would(site):
    # map and filter report it as apart (their map() would end the batch),
    # comprehensions (key_by, the aggregates' keys, values) let it through:
    # the same either way, never a shorter batch
    records = [StopsAtThree((i, i)) for i in range(6)]
    fast = outcome(site, records, READS["first"][0])
    assert fast == outcome(site, records, READS["first"][1])
    assert fast[0] == "error" and "StopIteration" in fast[1] and "(3, 3)" in fast[1], fast


def python_calls_of(fn, work) -> int:
    """How many times `work()` calls the Python function `fn` (a profile
    hook sees Python calls as "call" events; a C getter makes none)."""
    calls = 0
    code = fn.__code__

    def profile(frame, event, _arg):
        nonlocal calls
        if event == "call" and frame.f_code is code:
            calls += 1

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        work()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return calls


@pytest.mark.parametrize("site", SITES)
def test_a_recognised_function_is_not_called_and_its_twin_is(site):
    records = [((i % 3, i), (i, i + 1)) for i in range(40)]  # e[1]: a pair, true, iterable
    recognised, twin = READS["second"]
    assert python_calls_of(recognised, lambda: outcome(site, records, recognised)) == 0
    assert python_calls_of(twin, lambda: outcome(site, records, twin)) >= 40


def test_a_step_keeps_the_users_function_for_its_name():
    fn = READS["first"][0]
    step = KeyBy(fn)
    assert step.fn is fn and type(step.fast) is itemgetter


def test_identity_is_one_object_after_a_copy_or_a_pickle():
    import copy
    import pickle

    step = KeyBy(READS["identity"][0])
    assert step.fast is IDENTITY
    assert copy.deepcopy(step).fast is IDENTITY and pickle.loads(pickle.dumps(IDENTITY)) is IDENTITY
