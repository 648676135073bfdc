"""Session 38's review of NaN join keys: a NaN that is not a float's
(`Decimal("NaN")`, a complex with a NaN part, keys `key_by` takes as
numbers) or a frozenset holding one paired as the float's did before the
fix: one object on both sides matched on one kernel, its copies on several
did not (16 pairs on 1 kernel, 1 on 3, for the same input). Now they match
nothing, as a float NaN, in every join, on 1, 2 and 3 kernels."""

import math
from collections import Counter
from decimal import Decimal

import pytest

from kernel import Dataflow, run
from operators import Session, Sliding, Tumbling

NAN_KEYS = {"Decimal": Decimal("NaN"), "complex": complex(math.nan, 1.0),
            "frozenset": frozenset([math.nan, 1]), "tuple of a Decimal": (1, Decimal("NaN"))}


def _joins(key, cores: int) -> list:
    flow = Dataflow("nan-keys-review")

    def side(tag: str):  # one key object on both sides, every other record an ordinary key
        events = [(key if i % 2 else "a", i / 10, f"{tag}{i}") for i in range(6)]
        return (flow.from_iterable(events, timestamp=lambda e: e[1], batch_size=2)
                .key_by(lambda e: e[0]).map_values(lambda e: e[2]))

    left, right = side("l"), side("r")
    handles = [left.join(right).collect(), left.join(right, ttl=1.0).collect(),
               left.join(right, Tumbling(1.0)).collect(), left.join(right, Sliding(2.0, 1.0)).collect(),
               left.join(right, Session(1.0)).collect()]
    run(flow, cores=cores)
    return [Counter(record[0] for record in handle.items) for handle in handles]


@pytest.mark.parametrize("name", list(NAN_KEYS))
def test_a_nan_of_another_number_or_in_a_frozenset_matches_nothing_on_1_2_and_3_kernels(name):
    # only "a"'s pairs: 3 x 3, twice in the sliding windows (two hold them all)
    expected = [Counter({"a": 9})] * 3 + [Counter({"a": 18}), Counter({"a": 9})]
    for cores in (1, 2, 3):
        assert _joins(NAN_KEYS[name], cores) == expected, f"on {cores} kernels"


def test_a_closed_windows_usual_keys_are_looked_at_by_type_not_one_call_a_key(monkeypatch):
    """The NaN keys of a closed window were looked for by one Python call a
    key with values on both sides: 15-25% of a tumbling join of distinct
    keys. Keys that are str, int, or tuples of them cannot hold a NaN and
    are passed at once (one pass in C); others are still looked at."""
    from kernel.operators.windows import _join

    calls = Counter()

    def counted(key):
        calls[type(key).__name__] += 1
        return holds_nan(key)

    holds_nan = _join.holds_nan
    monkeypatch.setattr(_join, "holds_nan", counted)
    flow = Dataflow("usual-keys")
    sides = [flow.from_iterable(range(300), timestamp=lambda x: x / 100).key_by(key)
             for key in (lambda x: x, lambda x: f"k{x}", lambda x: (x, "k"), lambda x: x + 0.5)]
    joins = [side.join(side, Tumbling(1.0)).collect() for side in sides]  # (each key once a side)
    run(flow)
    assert [len(handle.items) for handle in joins] == [300] * 4
    assert calls == Counter(float=300)  # (floats may be NaN: still each looked at)
