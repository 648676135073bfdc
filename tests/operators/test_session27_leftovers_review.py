"""Leftovers of earlier reviews in operators/: `distinct()` of NaNs.

A NaN equals nothing, not even itself, but Python's sets match the same
object by identity: `distinct()` kept a repeated NaN object once on one
kernel and once per arrival on several (each crossing of an exchange makes
a new object), and two NaN objects always twice. The rule now: every float
NaN equals every other one for `distinct()` (as pandas' drop_duplicates),
alone, as a keyed stream's value or inside a tuple, on any number of
kernels.
"""

from __future__ import annotations

import math

import pytest

from kernel import Dataflow, run
from operators import Tumbling

NAN = float("nan")


def nan_free(items) -> list:
    """The items with every float NaN (at any depth of tuples) as the
    string "NaN", so results compare with ==."""
    def plain(x):
        if isinstance(x, float) and math.isnan(x):
            return "NaN"
        if isinstance(x, tuple):
            return tuple(plain(i) for i in x)
        return x
    return [plain(x) for x in items]


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_a_streams_distinct_keeps_one_nan_however_many_kernels(cores):
    records = [NAN, 1.0, NAN, float("nan"), 2.0, NAN, float("-nan"), (1, NAN), (1, float("nan")),
               ("a", NAN), ("a", float("-nan")), 1.0]
    flow = Dataflow()
    out = flow.from_iterable(records, batch_size=2).distinct().collect()
    run(flow, cores=cores)
    expected = ["NaN", 1.0, 2.0, (1, "NaN"), ("a", "NaN")]
    got = nan_free(out.items)
    if cores == 1:
        assert got == expected
    assert sorted(got, key=repr) == sorted(expected, key=repr)


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_a_keyed_streams_distinct_keeps_one_nan_value_per_key(cores):
    pairs = [("a", NAN), ("a", NAN), ("b", NAN), ("a", float("nan")), ("a", 1.0), ("b", float("-nan"))]
    flow = Dataflow()
    keyed = flow.from_iterable(pairs, batch_size=1).key_by(lambda p: p[0]).map_values(lambda p: p[1])
    out = keyed.distinct().collect()
    run(flow, cores=cores)
    assert sorted(nan_free(out.items), key=repr) == [("a", "NaN"), ("a", 1.0), ("b", "NaN")]


@pytest.mark.parametrize("cores", [1, 2])
def test_distinct_within_windows_keeps_one_nan_per_window(cores):
    events = [(NAN, 0.0), (NAN, 0.5), (float("nan"), 0.75), (NAN, 1.5), (float("nan"), 1.75)]
    flow = Dataflow()
    stream = flow.from_iterable(events, timestamp=lambda e: e[1], batch_size=1).map(lambda e: e[0])
    out = stream.distinct(within=Tumbling(1.0)).collect()
    run(flow, cores=cores)
    assert nan_free(out.items) == ["NaN", "NaN"]
