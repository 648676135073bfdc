"""Review of the codec's named-runs path: cases where what comes back is not
what pickle gives back. Each test compares with pickle.loads(pickle.dumps(batch))."""

from __future__ import annotations

import collections
import copyreg
import pickle
import sys
import types
from typing import NamedTuple
from unittest import mock

import pytest
from kernel.net._codec import KIND_NAMED_RUNS, UnpicklableRecord, decode, encode_batch


def round_trip(batch):
    kind, body = encode_batch(batch)
    return decode(kind, memoryview(body))


def by_pickle(batch):
    return pickle.loads(pickle.dumps(batch, protocol=5))


class Span(NamedTuple):
    start: float
    end: float


class Sized(collections.namedtuple("SizedBase", "start end")):
    """Built from (start, size); pickles by its own __getnewargs__ accordingly."""

    __slots__ = ()

    def __new__(cls, start, size):
        return super().__new__(cls, start, start + size)

    def __getnewargs__(self):
        return (self.start, self.end - self.start)


class Swapped(NamedTuple):
    a: float
    b: float

    def __getnewargs_ex__(self):  # pickle (protocol >= 2) prefers this to __getnewargs__
        return (self.b, self.a), {}


class Registered(NamedTuple):
    a: float


def test_a_namedtuple_with_its_own_getnewargs_comes_back_as_pickle_gives_it():
    # pickle: Sized.__new__(Sized, 1.0, 5.0) -> Sized(1.0, 6.0); the columns
    # call Sized.__new__(Sized, *tuple(w)) = (1.0, 6.0) -> Sized(1.0, 7.0)
    window = Sized(1.0, 5.0)
    batch = [("k", window, i) for i in range(8)]
    back = round_trip(batch)
    assert back == by_pickle(batch) == batch
    assert back[0][1].end == 6.0


def test_a_namedtuple_with_its_own_getnewargs_ex_comes_back_as_pickle_gives_it():
    one = Swapped(1.0, 2.0)
    batch = [("k", one, i) for i in range(8)]
    assert round_trip(batch) == by_pickle(batch)  # pickle: Swapped(2.0, 1.0); columns: Swapped(1.0, 2.0)


def test_a_namedtuple_with_a_copyreg_reducer_comes_back_as_pickle_gives_it():
    one = Registered(1.0)
    batch = [("k", one, i) for i in range(8)]
    with mock.patch.dict(copyreg.dispatch_table, {Registered: lambda r: (Registered, (r.a * 2,))}):
        expected = by_pickle(batch)  # Registered(2.0)
        assert round_trip(batch) == expected  # columns ignore the dispatch table: Registered(1.0)


def test_a_namedtuple_shared_by_runs_that_are_not_consecutive_comes_back_shared():
    # A, B, A: pickle's memo gives back one A for both of its runs; the columns
    # build a new namedtuple for each run
    span, other = Span(0.0, 1.0), Span(1.0, 2.0)
    batch = ([("k", span, i) for i in range(8)] + [("k", other, i) for i in range(8)]
             + [("k", span, i) for i in range(8)])
    expected = by_pickle(batch)
    assert expected[0][1] is expected[16][1]
    back = round_trip(batch)
    assert back == expected
    assert back[0][1] is back[16][1]


@pytest.fixture
def rebound_module(request):
    name = f"kernel_codec_review_{request.node.name}"  # one a test: the codec's caches outlive a test
    module = types.ModuleType(name)
    sys.modules[name] = module

    def make():
        class X(NamedTuple):
            a: float

        X.__module__, X.__qualname__ = name, "X"
        module.X = X
        return X

    yield make
    del sys.modules[name]


def test_a_class_rebound_under_its_name_is_found_again_as_pickle_finds_it(rebound_module):
    # a notebook's cell defining a namedtuple, run again: a body naming
    # "module:X" must come back as the X that name gives now, not the one
    # the codec looked up the first time
    old = rebound_module()
    one = old(1.0)  # (runs are of one object)
    batch = [("k", one, i) for i in range(8)]
    kind, body = encode_batch(batch)
    assert kind == KIND_NAMED_RUNS
    pickled = pickle.dumps(batch, protocol=5)
    new = rebound_module()
    assert type(pickle.loads(pickled)[0][1]) is new
    assert type(decode(kind, body)[0][1]) is new  # the codec: old, from its cache


def test_instances_of_a_class_no_longer_found_by_its_name_fail_as_pickle_does(rebound_module):
    old = rebound_module()
    one = old(1.0)  # (runs are of one object)
    batch = [("k", one, i) for i in range(8)]
    assert encode_batch(batch)[0] == KIND_NAMED_RUNS  # the codec remembers `old` as carried by its name
    rebound_module()
    with pytest.raises(pickle.PicklingError):
        pickle.dumps(batch, protocol=5)
    with pytest.raises(UnpicklableRecord):  # the codec sends them by columns
        encode_batch(batch)
