"""The batch codec: every record arrives exactly as it left, types included."""

from __future__ import annotations

import collections
import dataclasses
import enum
import math
import pickle
import threading
from typing import NamedTuple
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel.net._channel import TimedBatch
from kernel.net._codec import (
    HEADER,
    KIND_END,
    KIND_NAMED_RUNS,
    KIND_PICKLE,
    KIND_SCALARS,
    KIND_TUPLES,
    KIND_WATERMARK,
    TIMED,
    UnpicklableRecord,
    decode,
    encode_batch,
    encode_watermark,
)


def same(a, b) -> bool:
    """Structural equality that also demands identical types at every level
    (True is not 1, a tuple is not a list) and takes nan as equal to nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        # -0.0 == 0.0 but is not the same value.
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            any(same(ka, kb) and same(va, vb) for kb, vb in b.items()) for ka, va in a.items()
        )
    if isinstance(a, (set, frozenset)):
        return len(a) == len(b) and all(any(same(x, y) for y in b) for x in a)
    return a == b


def round_trip_batch(batch):
    kind, body = encode_batch(batch)
    assert isinstance(body, bytes)
    return kind, decode(kind, body)


def round_trip_pairs(pairs):
    kind, body = encode_batch(pairs)
    assert isinstance(body, bytes)
    return kind, decode(kind, body)


# -- strategies ---------------------------------------------------------------

big_ints = st.one_of(
    st.integers(-(2**63), 2**64 - 1),  # what msgpack holds
    st.integers(2**64, 2**200),  # beyond 64 bits: must fall back, not fail
    st.integers(-(2**200), -(2**63) - 1),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    big_ints,
    floats,
    st.text(max_size=20),
    st.binary(max_size=20),
)
hashables = st.recursive(
    scalars, lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3), max_leaves=6
)
records = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner),
        st.tuples(inner, inner),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3),
    ),
    max_leaves=12,
)


# -- batches of records ---------------------------------------------------------

settings_ = settings(max_examples=150, deadline=None)


@settings_
@given(st.lists(records, max_size=30))
def test_any_batch_round_trips_exactly(batch):
    _, back = round_trip_batch(batch)
    assert same(back, batch)


@settings_
@given(st.lists(scalars, max_size=30))
def test_scalar_batches_round_trip_exactly(batch):
    kind, back = round_trip_batch(batch)
    assert kind in (KIND_SCALARS, KIND_PICKLE)
    assert same(back, batch)


@settings(deadline=None)
@given(st.lists(st.integers(-(2**63), 2**64 - 1) | st.text() | st.booleans() | st.none(), max_size=20))
def test_plain_scalars_take_the_msgpack_path(batch):
    kind, back = round_trip_batch(batch)
    assert kind == KIND_SCALARS
    assert same(back, batch)


def test_bools_stay_bools_and_ints_stay_ints():
    batch = [True, 1, False, 0, 1.0, None, b"", ""]
    kind, back = round_trip_batch(batch)
    assert kind == KIND_SCALARS
    assert [type(x) for x in back] == [bool, int, bool, int, float, type(None), bytes, str]
    assert back == batch


def test_ints_beyond_64_bits_fall_back_to_pickle():
    batch = [1, 2**64, -(2**63) - 1, 2**100]
    kind, back = round_trip_batch(batch)
    assert kind == KIND_PICKLE
    assert back == batch
    assert all(type(x) is int for x in back)


def test_the_64_bit_edges_stay_on_msgpack():
    batch = [2**64 - 1, -(2**63), 2**63, 2**63 - 1]
    kind, back = round_trip_batch(batch)
    assert kind == KIND_SCALARS
    assert back == batch


def test_special_floats():
    batch = [math.nan, math.inf, -math.inf, -0.0, 0.1, 5e-324]
    kind, back = round_trip_batch(batch)
    assert kind == KIND_SCALARS
    assert same(back, batch)


def test_tuples_and_lists_are_told_apart():
    batch = [(1, 2), [1, 2], ((1,), [2]), [], (), {"a": (1,)}]
    kind, back = round_trip_batch(batch)
    assert kind == KIND_PICKLE
    assert same(back, batch)


def test_empty_batch():
    _kind, back = round_trip_batch([])
    assert back == []
    assert type(back) is list


def test_strings_with_lone_surrogates_round_trip():
    # A valid Python str (os.fsdecode of a non-UTF-8 file name gives these);
    # stable_hash already accepts them ("surrogatepass"), so the codec must
    # carry them too rather than fail the exchange.
    batch = ["caf\udce9", "\ud800", "ok"]
    _kind, back = round_trip_batch(batch)
    assert back == batch


# -- batches of (key, value) pairs ----------------------------------------------


@settings_
@given(st.lists(st.tuples(hashables, records), max_size=30))
def test_any_pairs_round_trip_exactly(pairs):
    _kind, back = round_trip_pairs(pairs)
    assert same(back, pairs)
    assert all(type(p) is tuple for p in back)


@settings_
@given(st.lists(st.tuples(scalars, scalars), max_size=30))
def test_scalar_pairs_round_trip_exactly(pairs):
    kind, back = round_trip_pairs(pairs)
    assert kind in (KIND_TUPLES, KIND_PICKLE) or not pairs
    assert same(back, pairs)


def test_scalar_pairs_take_the_msgpack_path_and_come_back_as_tuples():
    pairs = [("a", 1), (2, "b"), (True, None), (b"k", 1.5), (None, False)]
    for batch in (pairs[:1], pairs[:4], pairs):  # one pair, a small batch, a large one
        kind, back = round_trip_pairs(batch)
        assert kind == KIND_TUPLES
        assert same(back, batch)


def test_pairs_with_structured_values_fall_back_to_pickle():
    pairs = [("a", (1, 2)), ("b", [1, 2]), (("x", 1), 2**70)]
    kind, back = round_trip_pairs(pairs)
    assert kind == KIND_PICKLE
    assert same(back, pairs)


def test_pairs_that_are_lists_stay_lists():
    pairs = [["a", 1], ["b", 2]]
    _kind, back = round_trip_pairs(pairs)
    assert same(back, pairs)


def test_pair_keys_with_big_ints():
    pairs = [(2**64, 1), (1, 2**64)]
    kind, back = round_trip_pairs(pairs)
    assert kind == KIND_PICKLE
    assert same(back, pairs)


def test_empty_pairs():
    _, back = round_trip_pairs([])
    assert back == []


def test_pairs_with_lone_surrogates_round_trip():
    pairs = [("caf\udce9", 1), ("x", "\ud800")]
    _, back = round_trip_pairs(pairs)
    assert back == pairs


# -- progress frames and headers -------------------------------------------------


@settings(deadline=None)
@given(st.floats(allow_nan=False))
def test_watermarks_round_trip(watermark):
    kind, body = encode_watermark(watermark)
    assert kind == KIND_WATERMARK
    back = decode(kind, body)
    assert type(back) is float
    assert same(back, watermark)


@pytest.mark.parametrize("watermark", [math.inf, -math.inf, 0.0, 1.5])
def test_watermark_edges(watermark):
    assert decode(*encode_watermark(watermark)) == watermark


def test_end_frame_decodes_to_none():
    assert decode(KIND_END, b"") is None


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown frame kind 99"):
        decode(99, b"")


@settings(deadline=None)
@given(st.integers(0, 255), st.integers(0, 2**32 - 1))
def test_header_round_trips(kind, channel):
    head = HEADER.pack(kind, channel)
    assert len(head) == HEADER.size == 5
    assert HEADER.unpack_from(head + b"body") == (kind, channel)


@settings(max_examples=100, deadline=None)
@given(st.lists(records, max_size=10), st.lists(st.tuples(scalars, scalars), max_size=10), st.floats())
def test_whole_frames_decode_from_a_memoryview(batch, pairs, watermark):
    """The transport hands decode() a slice of the frame it popped."""
    frames = [
        (*encode_batch(batch), batch),
        (*encode_batch(pairs), pairs),
        (*encode_watermark(watermark), watermark),
        (KIND_END, b"", None),
    ]
    for channel, (kind, body, expected) in enumerate(frames):
        frame = memoryview(HEADER.pack(kind, channel) + body)
        got_kind, got_channel = HEADER.unpack_from(frame)
        assert (got_kind, got_channel) == (kind, channel)
        assert same(decode(got_kind, frame[HEADER.size :]), expected)


def test_pickle_bodies_are_protocol_5():
    kind, body = encode_batch([{1}])
    assert kind == KIND_PICKLE
    assert body[:2] == b"\x80\x05"
    assert pickle.loads(body) == [{1}]


def test_tuples_of_scalars_of_any_length_take_the_msgpack_path():
    batch = [(1,), (2, "b", None), (), (b"x", 1.5, True, -(2**63))]
    kind, body = encode_batch(batch)
    assert kind == KIND_TUPLES
    assert same(decode(kind, body), batch)


@pytest.mark.parametrize(
    "batch",
    [
        [(1, "a"), [2, "b"]],  # a list among tuples
        [(1, (2, 3))],  # a nested tuple would come back as a list
        [(1, [2, 3])],
        [("a", 2**64)],  # beyond msgpack
        [(1, "a"), 5],  # a scalar among tuples
    ],
)
@pytest.mark.parametrize("times", [1, 5, 20])
def test_batches_msgpack_cannot_carry_exactly_go_by_pickle(batch, times):
    batch = batch * times  # each way of checking types: a loop, a set, a flat list
    kind, body = encode_batch(batch)
    assert kind == KIND_PICKLE
    assert same(decode(kind, body), batch)


@pytest.mark.parametrize("timed", [False, True])
@pytest.mark.parametrize("size", [1, 3, 40])  # one pair, a small batch, a large one
def test_a_batch_pickle_refuses_names_its_first_unpicklable_record(size, timed):
    lock = threading.Lock()
    batch = [(i, "x") for i in range(size)]
    batch[size // 2] = (size // 2, lock)
    batch.append((size, lock))
    if timed:
        batch = TimedBatch(batch, [float(i) for i in range(len(batch))])
    with pytest.raises(UnpicklableRecord) as info:
        encode_batch(batch)
    assert info.value.found
    assert info.value.record == (size // 2, lock)
    assert isinstance(info.value.__cause__, TypeError)  # pickle's own error
    assert "cannot pickle '_thread.lock' object" in str(info.value.__cause__)


def test_records_that_are_not_pairs_keep_every_field():
    # a 3-tuple sent as "pairs" used to lose its third field
    for batch in ([(1, 2, 3)], [(1,)], [5], [(1, "a"), (2, "b", "c")]):
        kind, body = encode_batch(batch)
        assert decode(kind, body) == batch


@pytest.mark.parametrize("payload", [None, 1.5, -math.inf, math.inf, "idle", "epoch", "join"])
def test_progress_payloads_round_trip(payload):
    from kernel.net._channel import IDLE, EpochMarker, RoundMarker
    from kernel.net._codec import encode_progress

    if payload == "join":  # a loop's JOIN: every field crosses, an idle kernel's `idle` too
        payload = RoundMarker(3, RoundMarker.JOIN, 5, False, 1.5, 7, 0.25, 9, True)
    payload = {"idle": IDLE, "epoch": EpochMarker(7)}.get(payload, payload)
    assert decode(*encode_progress(payload)) == payload


# -- the fast paths: one pair inline, large batches by C-level passes -------------

class Colour(enum.IntEnum):
    RED = 1


class Name(enum.StrEnum):
    ADA = "ada"


class MyStr(str):
    pass


class MyInt(int):
    pass


class MyFloat(float):
    pass


class MyBytes(bytes):
    pass


Pair = collections.namedtuple("Pair", "key value")

# Values that msgpack would carry, but not exactly (or not at all): each must send its batch by pickle.
inexact = st.sampled_from(
    [Colour.RED, Name.ADA, MyStr("s"), MyInt(3), MyFloat(1.5), MyBytes(b"b"), (1, 2), [1, 2],
     {"a": 1}, frozenset({1}), bytearray(b"x"), 2**64, -(2**63) - 1, "\ud800"]
)
plain_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), floats,
                          st.text(max_size=8), st.binary(max_size=8))


@settings_
@given(plain_scalars, plain_scalars)
def test_one_pair_takes_the_msgpack_path(key, value):
    kind, back = round_trip_batch([(key, value)])
    assert kind == KIND_TUPLES
    assert same(back, [(key, value)])


@settings_
@given(st.one_of(plain_scalars, inexact), st.one_of(plain_scalars, inexact))
def test_one_pair_round_trips_exactly(key, value):
    kind, back = round_trip_batch([(key, value)])
    assert same(back, [(key, value)])
    if kind != KIND_PICKLE:
        assert all(type(x) in (str, int, float, bool, type(None), bytes) for x in (key, value))


@pytest.mark.parametrize("record", [Pair(1, "a"), (1, "a", "b"), (1,), ["a", 1], "ab", 5, {1: 2}])
def test_one_record_that_is_not_a_plain_pair_round_trips_exactly(record):
    _kind, back = round_trip_batch([record])
    assert same(back, [record])


@settings_
@given(st.integers(0, 4), st.integers(5, 60), st.data())
def test_tuples_of_one_width_take_the_msgpack_path(width, n, data):
    """Every record a tuple of `width` plain scalars: msgpack, whatever the mix of types."""
    row = st.lists(plain_scalars, min_size=width, max_size=width).map(tuple)
    batch = data.draw(st.lists(row, min_size=n, max_size=n))
    kind, back = round_trip_batch(batch)
    assert kind == KIND_TUPLES
    assert same(back, batch)
    assert all(type(r) is tuple for r in back)


def test_tuples_of_several_widths_keep_their_widths():
    # the fields' types repeat the first record's, (int, str), though the
    # records do not: the check looks at every field, not at their places
    for times in (1, 4):  # a set of the fields' types, a flat list of them
        batch = [(1, "a"), (2,), ("b", 3, "c"), (4, "d"), (5, "e")] * times
        kind, back = round_trip_batch(batch)
        assert kind == KIND_TUPLES
        assert same(back, batch)


# A batch of more than _CHECKED_AT_ONCE records is checked a slice at a
# time: whatever slice holds the one record msgpack cannot carry exactly,
# the whole batch goes by pickle. Slices of 8 in the tests given
# `round_trip_in_slices_of_8`, so that a few dozen records span many.

def round_trip_in_slices_of_8(batch):
    import kernel.net._codec as codec

    with mock.patch.object(codec, "_CHECKED_AT_ONCE", 8):
        return round_trip_batch(batch)


BOTH_WAYS = pytest.mark.parametrize("trip", [round_trip_batch, round_trip_in_slices_of_8])


@BOTH_WAYS
@settings_
@given(st.lists(st.tuples(plain_scalars, plain_scalars), min_size=9, max_size=60), st.data())
def test_one_inexact_field_anywhere_sends_the_batch_by_pickle(trip, pairs, data):
    i = data.draw(st.integers(0, len(pairs) - 1))
    column = data.draw(st.integers(0, 1))
    bad = data.draw(inexact)
    record = list(pairs[i])
    record[column] = bad
    pairs[i] = tuple(record)
    kind, back = trip(pairs)
    assert kind == KIND_PICKLE
    assert same(back, pairs)


@BOTH_WAYS
@settings_
@given(st.lists(st.tuples(plain_scalars, plain_scalars), min_size=9, max_size=60), st.data())
def test_one_record_of_another_shape_among_pairs_round_trips_exactly(trip, pairs, data):
    i = data.draw(st.integers(0, len(pairs) - 1))
    pairs[i] = data.draw(st.sampled_from([(1, "a", "b"), (1,), (), Pair(1, "a"), [1, "a"], "ab", 5, True]))
    kind, back = trip(pairs)
    assert same(back, pairs)
    if type(pairs[i]) is tuple:  # other widths: still msgpack, as rows
        assert kind == KIND_TUPLES
    else:
        assert kind == KIND_PICKLE


@settings_
@given(st.lists(plain_scalars, min_size=9, max_size=60), st.data())
def test_scalars_in_slices_stay_scalars_unless_one_slice_holds_something_else(batch, data):
    kind, back = round_trip_in_slices_of_8(batch)
    assert kind == KIND_SCALARS and same(back, batch)
    batch[data.draw(st.integers(0, len(batch) - 1))] = data.draw(st.sampled_from([(1, 2), [1], MyInt(3)]))
    kind, back = round_trip_in_slices_of_8(batch)
    assert kind == KIND_PICKLE and same(back, batch)


def test_a_batch_of_many_slices_is_checked_to_its_last_record():
    pairs = [(n, f"k{n}") for n in range(10_000)]  # three slices of the real size
    kind, back = round_trip_batch(pairs)
    assert kind == KIND_TUPLES and same(back, pairs)
    for last in ((9_999, ["k"]), (9_999, MyStr("k")), [9_999, "k"]):
        batch = [*pairs[:-1], last]
        kind, back = round_trip_batch(batch)
        assert kind == KIND_PICKLE and same(back, batch)
    numbers = [*range(9_999), True]
    kind, back = round_trip_batch(numbers)
    assert kind == KIND_SCALARS and same(back, numbers)


def test_large_batches_of_empty_tuples_keep_their_length():
    batch = [()] * 7
    kind, back = round_trip_batch(batch)
    assert kind == KIND_TUPLES
    assert same(back, batch)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(st.tuples(plain_scalars, plain_scalars), st.tuples(plain_scalars, inexact)),
                max_size=12), st.data())
def test_timed_batches_round_trip_exactly(pairs, data):
    stamps = data.draw(st.lists(st.floats(allow_nan=False), min_size=len(pairs), max_size=len(pairs)))
    batch = TimedBatch(pairs, stamps)
    kind, body = encode_batch(batch)
    back = decode(kind, memoryview(body))
    assert type(back) is TimedBatch
    assert same(list(back), pairs)
    assert back.timestamps == stamps


def test_timed_progress_kinds_are_unknown():
    from kernel.net._codec import TIMED

    with pytest.raises(ValueError, match="unknown frame kind"):
        decode(TIMED | KIND_WATERMARK, b"")


def test_batches_in_turn_do_not_borrow_each_others_check():
    # a large batch's check remembers the last batch's field types: each of
    # these must still be judged on its own fields
    good = [(i, f"w{i}") for i in range(20)]
    batches = [
        good,
        [*good[:1], (MyInt(1), "x"), *good[2:]],  # same first record, same length
        good[:1] + [(1, Colour.RED)] * 19,
        [(f"w{i}", i) for i in range(20)],
        good[:1] + [("w", 1)] * 19,  # other scalar types than the first record's: still exact
        [(1, [2]), *good[1:]],
        good,
        good[:19],
    ]
    kinds = []
    for batch in batches:
        kind, back = round_trip_batch(batch)
        assert same(back, batch)
        kinds.append(kind)
    T, P = KIND_TUPLES, KIND_PICKLE
    assert kinds == [T, P, P, T, T, P, T, T]


# -- tuples with a namedtuple field in runs: a windowed aggregate's results -----------

class Span(NamedTuple):
    """A Window-like namedtuple, importable by its name from this module."""

    start: float
    end: float


class Reducing(NamedTuple):
    start: float

    def __reduce__(self):  # pickles otherwise than by its fields: never by columns
        return (Reducing, (self.start + 0,))


def window_results(draw, n_runs: int, run: int, key) -> list:
    batch = []
    for _ in range(n_runs):
        span = Span(draw(plain_scalars), draw(plain_scalars))
        length = run + draw(st.integers(0, 3))  # runs of several lengths in one batch
        batch.extend((draw(key), span, draw(plain_scalars)) for _run in range(length))
    return batch


@settings_
@given(st.integers(1, 6), st.integers(5, 12), st.data())
def test_windowed_results_take_the_column_path_and_round_trip_exactly(n_runs, run, data):
    key = st.one_of(st.sampled_from(["a", "b", "c", ""]), st.text(max_size=3))
    batch = window_results(data.draw, n_runs, run, key)
    kind, back = round_trip_batch(batch)
    assert kind == KIND_NAMED_RUNS
    assert same(back, batch)
    assert all(type(r) is tuple and type(r[1]) is Span for r in back)
    # one namedtuple a run, as pickle's memo would give back
    assert len({id(r[1]) for r in back}) == n_runs


def test_equal_namedtuples_of_other_field_types_stay_apart():
    # Span(0, 1) == Span(0.0, 1.0), but a run is one object: each comes back as it left
    ints, floats_ = Span(0, 1), Span(0.0, 1.0)
    batch = [("k", ints, 1)] * 4 + [("k", floats_, 1.0)] * 4
    kind, back = round_trip_batch(batch)
    assert kind == KIND_NAMED_RUNS
    assert same(back, batch)


def test_a_column_of_str_is_a_table_but_equal_keys_of_other_types_stay_apart():
    span = Span(0.0, 1.0)
    keys = ["a", "a", 1, 1.0, True, "a", b"a", None]  # 1 == 1.0 == True: no table for this column
    batch = [(key, span, i) for i, key in enumerate(keys)]
    kind, back = round_trip_batch(batch)
    assert kind == KIND_NAMED_RUNS
    assert same(back, batch)
    strings = [(key, span, 0) for key in ["x", "y", "x", "x", "y", "z", "x", "y"]]
    kind, body = encode_batch(strings)
    assert kind == KIND_NAMED_RUNS and body.count(b"x") == 1  # each distinct string once
    assert same(decode(kind, body), strings)


@pytest.mark.parametrize("case", ["short runs", "str subclass", "inexact field", "unlike class",
                                  "custom reduce", "other width", "nested field", "a list record",
                                  "alternating"])
def test_batches_the_columns_cannot_carry_exactly_go_by_pickle(case):
    span = Span(0.0, 1.0)
    batch = [("k", span, i) for i in range(8)]
    if case == "short runs":
        batch = [("k", Span(float(i), 1.0), i) for i in range(8)]
    elif case == "str subclass":
        batch[3] = (MyStr("k"), span, 3)
    elif case == "inexact field":
        batch[5] = ("k", span, 2**64)
    elif case == "unlike class":
        batch[2] = ("k", Pair(0.0, 1.0), 2)
    elif case == "custom reduce":
        reducing = Reducing(1.5)
        batch = [("k", reducing, i) for i in range(8)]
    elif case == "other width":
        batch[4] = ("k", span, 4, "a fourth field")
    elif case == "nested field":
        nested = Span((0.0,), 1.0)
        batch = [("k", nested, i) for i in range(8)]
    elif case == "a list record":
        batch[6] = ["k", span, 6]
    elif case == "alternating":  # two objects only, but a run each record
        other = Span(2.0, 3.0)
        batch = [("k", (span, other)[i % 2], i) for i in range(8)]
    kind, back = round_trip_batch(batch)
    assert kind == KIND_PICKLE
    assert same(back, batch)


@pytest.mark.parametrize("odd", [lambda span: ["k", span, 1], lambda span: "kSk",
                                 lambda span: ("k", span), lambda span: ("k", span, 1, 2)],
                         ids=["a list", "a str of the width", "narrower", "wider"])
def test_a_record_of_another_shape_past_the_first_checked_slice_round_trips_exactly(odd):
    # the first slice of a large batch settles its kind; the columns check the rest themselves
    from kernel.net import _codec

    span = Span(0.0, 1.0)
    n = _codec._CHECKED_AT_ONCE + 100
    batch = [("k", span, i) for i in range(n)]
    batch[n - 50] = odd(span)
    _kind, back = round_trip_batch(batch)
    assert same(back, batch)
    assert type(back[n - 50]) is type(batch[n - 50])


def test_a_namedtuple_its_name_does_not_find_fails_as_pickle_does():
    class Local(NamedTuple):  # its qualname has <locals>: not found again by name
        start: float

    with pytest.raises(UnpicklableRecord):
        encode_batch([("k", Local(1.5), i) for i in range(8)])


def test_the_library_windows_results_go_by_columns_in_timed_batches_too():
    from kernel.operators import Window

    windows = [Window(float(j), float(j + 1)) for j in range(4)]
    batch = TimedBatch([(f"k{i % 3}", windows[i // 4], i) for i in range(16)], [float(i) for i in range(16)])
    kind, body = encode_batch(batch)
    assert kind == KIND_NAMED_RUNS | TIMED
    back = decode(kind, memoryview(body))
    assert type(back) is TimedBatch and back.timestamps == batch.timestamps
    assert same(list(back), list(batch))


def test_namedtuple_classes_made_on_the_fly_do_not_pile_up_in_the_codec():
    from kernel.net import _codec

    for i in range(_codec._CACHED_CLASSES + 100):
        made = collections.namedtuple(f"Made{i}", "start")  # its module holds no such name: pickle
        one = made(1.0)
        with pytest.raises(UnpicklableRecord):
            encode_batch([("k", one, n) for n in range(8)])
        assert len(_codec._NAMED_CLASSES) <= _codec._CACHED_CLASSES


Carried = collections.namedtuple("Carried", "a b")


@dataclasses.dataclass
class Pickled:
    n: int


@pytest.mark.parametrize("shape", ["pickled", "a namedtuple's runs"])
def test_a_renamed_decoder_reads_another_modules_class_of_that_name_as_ours(shape):
    """A topic's subscriber reads the publisher's `__main__.X` as its own
    `pipeline.X` (`renamed_decoder`): here this module's classes written
    as a module of another name (same length, so the body stays whole)."""
    from kernel.net._codec import renamed_decoder

    one = Carried(1, 2)  # (runs are of one object)
    batch = [Pickled(n) for n in range(3)] if shape == "pickled" else [(one, n) for n in range(64)]
    kind, body = encode_batch(batch)
    assert (kind & ~TIMED) == (KIND_PICKLE if shape == "pickled" else KIND_NAMED_RUNS)
    cls = type(batch[0]) if shape == "pickled" else Carried
    elsewhere = body.replace(cls.__module__.encode(), b"x" * len(cls.__module__))
    with pytest.raises(ModuleNotFoundError):
        decode(kind, elsewhere)
    assert renamed_decoder(f"{'x' * len(cls.__module__)}.{cls.__qualname__}", cls)(kind, elsewhere) == batch
