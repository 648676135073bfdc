"""Review of operator fusion and the plain reads: failing cases found.

Each test compares a fused chain with the same steps run apart
(`runtime.FUSION = False`) and/or a plain loop doing the same calls."""

from __future__ import annotations

import pytest

import kernel.runtime._runtime as runtime
from kernel import Dataflow, KernelError, run


def outcome(build, records, fused, batch_size=64, cores=1):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "FUSION", fused)
        flow = Dataflow("review")
        out = build(flow.from_iterable(records, batch_size=batch_size)).collect()
        try:
            run(flow, cores=cores)
        except KernelError as exc:
            return ("error", type(exc).__name__, str(exc).split("\n\n")[0])
    return ("ok", out.items)


class Ambiguous:
    """A filter result without a truth value (a numpy array's kind)."""

    def __bool__(self):
        raise ValueError("the truth value is ambiguous")


def test_a_filter_result_without_truth_value_after_a_map_does_not_call_the_map_again():
    """map -> filter, the filter's result for the 2nd record has no truth
    value. Apart: the map is called once per record, then the filter fails
    naming itself, ValueError, record 20. Fused (Python 3.11): the error
    path (`_failing_test`, `_input_of`) calls the map's function on the
    failing record twice more; a map whose function can run only once per
    record (here it pops from a dict) then fails the run with the map's
    KeyError naming 'Map.on_batch' instead of the filter's error."""
    results = {}
    for fused in (False, True):
        table = {1: 10, 2: 20, 3: 30}
        calls = []

        def take(k, table=table, calls=calls):
            calls.append(k)
            return table.pop(k)

        def check(v):
            return Ambiguous() if v == 20 else True

        got = outcome(lambda s: s.map(take, name="take").filter(check, name="check"), [1, 2, 3], fused)
        results[fused] = (got, calls)
    apart, fused = results[False], results[True]
    assert apart[0][0] == "error" and "operator 'check" in apart[0][2] and "on record: 20" in apart[0][2]
    assert fused[0] == apart[0]


def test_a_filter_result_without_truth_value_calls_each_function_once_per_record():
    """The same with a pure map that counts its calls: apart [1, 2, 3]
    (each record once); fused the map's function runs on record 2 three
    times ([1, 2, 2, 2, ...]): README 'side-effecting functions are never
    called twice to find it'."""
    counted = {}
    for fused in (False, True):
        calls = []

        def tenfold(k, calls=calls):
            calls.append(k)
            return k * 10

        got = outcome(lambda s: s.map(tenfold).filter(lambda v: Ambiguous() if v == 20 else True),
                      [1, 2, 3], fused)
        assert got[0] == "error"
        counted[fused] = sorted(calls)
    assert counted[True] == counted[False] == [1, 2, 3]


class ReadOnce:
    """A record whose first `[...]` raises StopIteration (an exhausted
    source behind it, say) and later ones answer; reads are counted."""

    def __init__(self, value, reads):
        self.value, self.reads = value, reads

    def __getitem__(self, index):
        self.reads.append(self.value)
        if self.value == 2 and self.reads.count(2) == 1:
            raise StopIteration
        return self.value

    def __repr__(self):
        return f"ReadOnce({self.value})"


def first(e):
    return e[0]  # a plain read: run as itemgetter(0)


def first_as_written(e, _unused=None):
    return e[0]  # the same, not recognised (a default argument): called


def stop_outcome(step, fn, fused):
    reads = []
    records = [ReadOnce(v, reads) for v in (1, 2, 3)]
    return outcome(lambda s: step(s, fn), records, fused), reads


@pytest.mark.parametrize("fused", [False, True])
def test_a_plain_read_key_by_fails_as_its_function_does_on_a_stop_iteration(fused):
    """key_by(first) over records whose `[0]` raises StopIteration once.
    The function as written: 'raised StopIteration', record read once.
    The plain read (`_calls.mapped`): 'raised RuntimeError: raised
    StopIteration, which would silently end the batch', and the record's
    __getitem__ called a second time (reads [1, 2, 2])."""
    def step(s, fn):
        return s.key_by(fn, name="key").count()

    as_written = stop_outcome(step, first_as_written, fused)
    got = stop_outcome(step, first, fused)
    def named(outcome):
        return outcome[0][2].replace("first_as_written", "first")

    assert named(got) == named(as_written)
    assert "raised StopIteration" in got[0][2] and "RuntimeError" not in got[0][2]
    # the plain read's map() swallowed the StopIteration: the record is read
    # once more on this error path, to raise it with its arguments
    # (`_calls.mapped`, documented); the function as written reads it once
    assert as_written[1] == [1, 2] and got[1] in ([1, 2], [1, 2, 2])


def test_a_fused_map_then_plain_read_key_by_fails_as_apart_on_a_stop_iteration():
    """map -> key_by(first): apart 'raised RuntimeError: raised
    StopIteration, which would ...' (reads [1, 2, 2]); fused 'raised
    StopIteration:' (reads [1, 2])."""
    def step(s, fn):
        return s.map(lambda x: x, name="same").key_by(fn, name="key")

    assert stop_outcome(step, first, True)[0] == stop_outcome(step, first, False)[0]


def test_key_by_map_values_sum_fused_fails_as_apart_on_a_stop_iteration():
    """key_by -> map_values(first) -> sum: apart 'raised StopIteration:'
    (reads [1, 2]); fused into the sum (`_values_of_records`) 'raised
    RuntimeError: raised StopIteration, which would ...' (reads [1, 2, 2])."""
    def step(s, fn):
        return s.key_by(lambda e: 1, name="key").map_values(fn, name="value").sum()

    # (the same error; the plain read's second read on this error path is documented)
    assert stop_outcome(step, first, True)[0] == stop_outcome(step, first, False)[0]


def _two_flat_maps(log, bad):
    def gen(x):
        for i in range(2048):
            if bad and i == 1024:
                raise ValueError("generator failed at 1024")
            yield i

    def fail(x):
        if bad and x == 2500:
            raise KeyError(x)
        return x

    def build(s):
        return (s.flat_map(gen, name="gen").inspect(lambda x: log.append(("a", x)), name="look")
                .flat_map(lambda x: list(range(3000)) if x == 0 else [x], name="wide")
                .map(fail, name="fail").inspect(lambda x: log.append(("b", x)), name="after"))
    return build


def test_a_chain_of_two_flat_maps_in_pieces_fails_with_the_error_apart_gives():
    """One record 0; gen yields 0..2047 and raises at its 1,025th item
    (its second piece); wide turns 0 into 3,000 records; fail raises at
    2500 (in wide's third piece). Apart, gen's second piece is read
    before wide's third piece goes on: 'gen' raised ValueError. Fused,
    `FusedChain._through` hands all of wide's pieces of gen's first piece
    on before reading gen's next: 'fail' raised KeyError: 2500."""
    got = {fused: outcome(_two_flat_maps([], True), [0], fused, batch_size=1) for fused in (False, True)}
    assert got[False][0] == "error" and "operator 'gen" in got[False][2]
    assert got[True] == got[False]


def test_a_chain_of_two_flat_maps_in_pieces_gives_the_records_and_each_steps_calls_in_order():
    """The same without failures: the same records, and each inspect's own
    calls in the records' order. Between the steps' calls the order is not
    promised (README "Operators": a fused chain calls its steps record by
    record; two flat_maps handing on pieces interleave by ticks)."""
    logs, records = {}, {}
    for fused in (False, True):
        log = []
        got = outcome(_two_flat_maps(log, False), [0], fused, batch_size=1)
        assert got[0] == "ok" and len(got[1]) == 5047
        logs[fused], records[fused] = log, got[1]
    assert records[True] == records[False]
    for step in ("a", "b"):
        assert [x for s, x in logs[True] if s == step] == [x for s, x in logs[False] if s == step]


def test_two_inspects_in_a_batch_run_record_by_record_fused():
    """inspect(a).inspect(b) on a batch [1, 2]: step by step a(1), a(2),
    b(1), b(2); fused a(1), b(1), a(2), b(2), as a plain loop over the
    records would (README "Operators")."""
    logs = {}
    for fused in (False, True):
        log = logs[fused] = []

        def both(s, log=log):
            return s.inspect(lambda x: log.append(("a", x))).inspect(lambda x: log.append(("b", x)))

        outcome(both, [1, 2], fused)
    assert logs[False] == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert logs[True] == [("a", 1), ("b", 1), ("a", 2), ("b", 2)]


class UnpackCounted:
    """A record that unpacks as (key, value), counting its unpackings."""

    unpacked = 0

    def __init__(self, key, value):
        self.key, self.value = key, value

    def __iter__(self):
        UnpackCounted.unpacked += 1
        return iter((self.key, self.value))


def _feedback_sum(feedback, fused):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "FUSION", fused)
        flow = Dataflow("unpacked")

        def body(stream):
            return stream.filter(lambda p: isinstance(p, tuple)).map(feedback), stream

        looped = flow.from_iterable(range(6)).key_by(lambda n: n % 2).iterate(body, max_rounds=2)
        out = looped.map_values(lambda v: v * 10).sum().collect()
        try:
            run(flow)
        except KernelError as exc:
            return ("error", str(exc).split("\n\n")[0])
        return ("ok", sorted(out.items))


def test_map_values_fused_into_sum_unpacks_each_record_once():
    """A keyed loop feeds back one-shot iterators (`iter(pair)`): apart,
    map_values unpacks each once: [(0, 120), (1, 180)]. Fused into the
    sum (`columns_after.map_values_then`), the values are unpacked, then
    the keys from the same records again: 'function
    kernel.operators._stateless.MapValues.on_batch raised ValueError: not
    enough values to unpack (expected 2, got 0)' (raised outside the
    try, so not naming map_values' function)."""
    assert _feedback_sum(iter, False) == ("ok", [(0, 120), (1, 180)])
    assert _feedback_sum(iter, True) == _feedback_sum(iter, False)


def test_map_values_fused_into_sum_calls_a_records_iter_once():
    """The same with records whose __iter__ counts: apart 6 unpackings,
    fused 12."""
    counts = {}
    for fused in (False, True):
        UnpackCounted.unpacked = 0
        assert _feedback_sum(lambda p: UnpackCounted(*p), fused) == ("ok", [(0, 120), (1, 180)])
        counts[fused] = UnpackCounted.unpacked
    assert counts[True] == counts[False] == 6


@pytest.mark.parametrize("aggregate", ["sum", "reduce", "fold"])
@pytest.mark.parametrize("fused", [False, True])
def test_a_keyed_aggregate_names_a_record_that_is_no_pair_as_count_does(aggregate, fused):
    """A keyed loop feeds back ints (100, 101...) where pairs belong.
    count() fails naming '(key, value) = record', 'on record: 100' and
    the hint; sum, reduce and fold name their function ('operator.add',
    the lambda) and 'on record: (None, None)' - the loop variables as
    they were before the unpacking failed (the previous pair's, if the
    batch had one) - not the record."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "FUSION", fused)
        flow = Dataflow("no pairs")

        def body(stream):
            return stream.filter(lambda p: isinstance(p, tuple)).map(lambda p: p[1] + 100), stream

        looped = flow.from_iterable(range(3)).key_by(lambda n: n % 2).iterate(body, max_rounds=2)
        step = {"sum": lambda k: k.sum(), "reduce": lambda k: k.reduce(lambda a, b: a + b),
                "fold": lambda k: k.fold(0, lambda a, b: a + b)}[aggregate]
        step(looped).collect()
        with pytest.raises(KernelError) as caught:
            run(flow)
    message = str(caught.value)
    assert "on record: (None, None)" not in message
    assert "function '(key, value) = record'" in message and "on record: 100" in message
