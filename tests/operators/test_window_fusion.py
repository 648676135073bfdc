"""A window aggregate fused with the `map_values` and `key_by` before it
(`WindowAggregate.fuse_upstream`): keys and values go to the window as two
lists, and no `(key, value)` pair is built. Fused and unfused runs must give
the same results, the same late records and counts, and the same errors
(each naming the step whose function failed and the record it was given),
on one kernel and as the combiner's partial half on two. Against brute-force
references: the window tests (`test_windows.py`) build their keyed streams
with key_by + map_values, so they run this path too."""

from __future__ import annotations

import importlib.util
import math
import operator
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel.operators import KeyBy, MapValues

import kernel.runtime._runtime as runtime
from kernel import Dataflow, KernelError, KernelProcessError, VirtualClock, run
from operators import Sliding, Tumbling, Window

# the window tests' brute-force replay of a source's batches and watermarks
_spec = importlib.util.spec_from_file_location("_window_references",
                                               Path(__file__).with_name("test_windows.py"))
_windows = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_windows)

AGGREGATES = {
    "sum": lambda windowed: windowed.sum(),
    "count": lambda windowed: windowed.count(),
    "reduce": lambda windowed: windowed.reduce(operator.add),  # no running add: pairs built
}
WINDOWS = [Tumbling(1.0), Tumbling(0.25), Sliding(2.0, 0.5)]


@st.composite
def events(draw, max_size: int = 50):
    """(key, t, value) in arrival order, out of order by up to 2 s (some late)."""
    clock = 0.0
    out = []
    for _ in range(draw(st.integers(0, max_size))):
        clock += draw(st.sampled_from([0, 1, 2, 8])) / 8
        lag = draw(st.integers(0, 16)) / 8
        out.append((draw(st.sampled_from("abc")), clock - lag, draw(st.integers(-5, 30))))
    return out


def outcome(records, window, aggregate, *, fused, cores=1, batch_size=3, key=None, value=None, late=True):
    """Results, late records (`late=True`: a window with a late stream, which
    on several kernels has no combiner) and the late count, or the error."""
    runtime.FUSION = fused
    try:
        flow = Dataflow("window fusion")
        stream = flow.from_iterable(records, timestamp=lambda e: e[1], max_delay=0.0, batch_size=batch_size)
        keyed = (stream.key_by(key or (lambda e: e[0]), name="key_by(key)")
                 .map_values(value or (lambda e: e[2]), name="map_values(value)"))
        windowed = AGGREGATES[aggregate](keyed.window(window, late=late))
        results = windowed.collect()
        late_out = windowed.late.collect() if late else None
        try:
            run(flow, cores=cores, clock=VirtualClock() if cores == 1 else None)
        except KernelError as exc:
            error = exc.__cause__ if isinstance(exc, KernelProcessError) else exc
            return ("error", str(error).split(" (kernel ")[0])
        return ("ok", sorted(results.items, key=repr), Counter(late_out.items if late else ()),
                windowed.late_count.value)
    finally:
        runtime.FUSION = True


@settings(max_examples=60, deadline=None)
@given(records=events(), window=st.sampled_from(WINDOWS), aggregate=st.sampled_from(sorted(AGGREGATES)),
       batch_size=st.sampled_from([1, 3, 8]))
def test_fused_and_unfused_give_the_same_results_and_late_records(records, window, aggregate, batch_size):
    fused = outcome(records, window, aggregate, fused=True, batch_size=batch_size)
    assert fused == outcome(records, window, aggregate, fused=False, batch_size=batch_size)
    # and both the brute-force replay of the batches and their watermarks
    expected, late = _windows.replay(window, records, 0.0, batch_size)
    _, results, late_out, late_count = fused
    value = (lambda i: records[i][2]) if aggregate != "count" else (lambda i: 1)
    assert {(k, w): n for k, w, n in results} == {kw: sum(map(value, idx)) for kw, idx in expected.items()}
    assert late_out == Counter((k, v) for (k, _, v), is_late in zip(records, late) if is_late)
    assert late_count == sum(late)


def key_failing_on_13(record):
    if record[2] == 13:
        raise ValueError("key thirteen")
    return [record[0]] if record[2] == 17 else record[0]  # a list: unhashable, the window's hash fails


def value_failing_on_11(record):
    if record[2] == 11:
        raise ValueError("value eleven")
    return "text" if record[2] == 7 else record[2]  # a str: the sum's + fails


@pytest.mark.parametrize("window", [Tumbling(1.0), Sliding(2.0, 0.5)])
@pytest.mark.parametrize("aggregate", sorted(AGGREGATES))
@pytest.mark.parametrize("values, step, message", [
    ([1, 13, 2, 11], "key_by(key)", "raised ValueError: key thirteen\n  on record: ('a', 0.25, 13)"),
    ([1, 2, 11, 3, 13], "key_by(key)", "key thirteen"),  # key_by apart sees the whole batch first
    ([1, 2, 11, 3], "map_values(value)",
     "raised ValueError: value eleven\n  on record: ('a', ('a', 0.375, 11))"),
    ([1, 17, 2], "window", "unhashable"),
])
def test_a_failure_names_the_same_step_and_record_fused_or_not(window, aggregate, values, step, message):
    records = [("a", (i + 1) / 8, v) for i, v in enumerate(values)]
    fused = outcome(records, window, aggregate, fused=True, batch_size=8,
                    key=key_failing_on_13, value=value_failing_on_11)
    apart = outcome(records, window, aggregate, fused=False, batch_size=8,
                    key=key_failing_on_13, value=value_failing_on_11)
    assert fused == apart
    assert fused[0] == "error" and message in fused[1] and f"operator '{step}" in fused[1], fused


@pytest.mark.parametrize("window", [Tumbling(1.0), Sliding(2.0, 0.5)])
def test_a_sum_that_cannot_add_names_the_window_and_the_pair(window):
    records = [("a", 0.125, 1), ("a", 0.25, 7)]
    fused = outcome(records, window, "sum", fused=True, value=value_failing_on_11)
    assert fused == outcome(records, window, "sum", fused=False, value=value_failing_on_11)
    assert fused[0] == "error" and "TypeError" in fused[1] and "on record: ('a', 'text')" in fused[1], fused


@pytest.mark.parametrize("aggregate", ["sum", "count"])
def test_two_kernels_fuse_the_partial_half_and_agree(aggregate):
    # in order: nothing late; ~40 events a key, kernel and window, so the
    # partial half (no late stream: a combiner) aggregates, by add_columns,
    # rather than passing records on
    records = [(f"k{i % 3}", i / 256, i % 11) for i in range(3000)]
    options = {"cores": 2, "batch_size": 64, "late": False}
    fused = outcome(records, Tumbling(1.0), aggregate, fused=True, **options)
    assert fused == outcome(records, Tumbling(1.0), aggregate, fused=False, **options)
    expected: Counter = Counter()
    for key, t, value in records:
        expected[(key, Window(math.floor(t), math.floor(t) + 1.0))] += value if aggregate == "sum" else 1
    assert fused[0] == "ok" and {(k, w): n for k, w, n in fused[1]} == dict(expected) and fused[3] == 0


def test_the_window_takes_key_by_and_map_values_places(monkeypatch):
    """Fused, neither key_by nor map_values runs its own on_batch or
    transform: no pair is built. (What a run that counts records fuses and
    counts: test_fusion_chains.py.)"""
    calls = []
    for step in (KeyBy, MapValues):
        for method in ("on_batch", "transform"):  # transform: the step alone inside a fused chain
            original = getattr(step, method)

            def counted(self, *args, original=original):
                calls.append(type(self).__name__)
                return original(self, *args)

            monkeypatch.setattr(step, method, counted)
    records = [("a", 0.5, 1), ("b", 0.75, 2), ("a", 1.5, 4)]
    got = outcome(records, Tumbling(1.0), "sum", fused=True)
    assert got[1] == [("a", Window(0.0, 1.0), 1), ("a", Window(1.0, 2.0), 4), ("b", Window(0.0, 1.0), 2)]
    assert calls == []
    assert outcome(records, Tumbling(1.0), "sum", fused=False) == got and calls


def test_a_map_values_after_another_gives_the_window_pairs_it_reads_alike():
    """The window takes the second map_values alone (the first is no
    key_by): the keys and values read from its pairs."""
    records = [(f"k{i % 5}", i / 16, i) for i in range(200)]

    def run_it(fused):
        runtime.FUSION = fused
        try:
            flow = Dataflow()
            out = (flow.from_iterable(records, timestamp=lambda e: e[1], batch_size=16)
                   .key_by(lambda e: e[0]).map_values(lambda e: e[2]).map_values(lambda v: v * 3)
                   .window(Tumbling(2.0)).sum().collect())
            run(flow, clock=VirtualClock())
            return sorted(out.items, key=repr)
        finally:
            runtime.FUSION = True

    expected: Counter = Counter()
    for key, t, v in records:
        start = math.floor(t / 2.0) * 2.0
        expected[(key, Window(start, start + 2.0))] += v * 3
    fused = run_it(True)
    assert fused == run_it(False) and {(k, w): n for k, w, n in fused} == dict(expected)
