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
