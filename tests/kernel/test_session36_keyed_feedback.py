"""Session 36: a loop on a keyed stream refuses a fed-back record that only
looks like a pair by its length.

The feedback took any record of length 2 for a `(key, value)` pair: "ab"
went round as key "a", value "b" (b"ab" as 97, 98), a dict of two entries
went round on one kernel and failed as a bare `KeyError: 0` naming no step
on two. Records on a keyed stream are pairs; text, bytes, mappings and sets
never are."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import Dataflow, KernelProcessError, OperatorError, run

NOT_PAIRS = ["ab", b"ab", bytearray(b"ab"), memoryview(b"ab"), {1: 2, 3: 4}, {1, 2}, frozenset({1, 2})]


def _loop_feeding_back(record, cores):
    flow = Dataflow("keyed-feedback")

    def body(pairs):
        # round 0's pair is fed back as `record`: the next round reads it as a pair
        return pairs.filter(lambda kv: kv == (1, 1)).map(lambda kv: record, name="bad"), pairs

    out = flow.from_iterable([1]).key_by(lambda x: x).iterate(body, max_rounds=3).collect()
    run(flow, cores=cores)
    return out.items


def _id(record) -> str:
    # (a memoryview's repr holds its address: the xdist workers collected other ids)
    return f"memoryview({bytes(record)!r})" if isinstance(record, memoryview) else repr(record)


@pytest.mark.parametrize("record", NOT_PAIRS, ids=_id)
@pytest.mark.parametrize("cores", [1, 2])
def test_text_bytes_mappings_and_sets_fed_back_are_no_pairs(record, cores):
    with pytest.raises((OperatorError, KernelProcessError)) as caught:
        _loop_feeding_back(record, cores)
    error = caught.value if isinstance(caught.value, OperatorError) else caught.value.__cause__
    assert isinstance(error, OperatorError)
    assert error.operator.startswith("iterate(body): feedback")
    assert error.function == "(key, value) = record"
    assert "no (key, value) pair" in error.error


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_pairs_of_any_sequence_kind_still_go_round(cores):
    # a tuple or a list of two is a pair, as it was
    assert sorted(map(tuple, _loop_feeding_back([1, 2], cores))) == [(1, 1), (1, 2)]
    assert sorted(_loop_feeding_back(("k", "v"), cores), key=repr) == sorted([(1, 1), ("k", "v")], key=repr)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.text(max_size=3)), max_size=20))
def test_a_keyed_loop_of_text_values_counts_as_a_plain_loop(pairs):
    """Text as a pair's value is fine: a keyed loop that strips a character
    a round, fed back while something is left, against a plain loop."""
    expected = []
    for key, text in pairs:
        while True:
            expected.append((key, text))
            if not text:
                break
            text = text[1:]
    for cores in (1, 2):
        flow = Dataflow("strip")
        keyed = flow.from_iterable(pairs).key_by(lambda p: p[0]).map_values(lambda p: p[1])

        def body(stream):
            return stream.filter(lambda kv: kv[1] != "").map(lambda kv: (kv[0], kv[1][1:])), stream

        out = keyed.iterate(body).collect()
        run(flow, cores=cores)
        assert sorted(out.items) == sorted(expected)
