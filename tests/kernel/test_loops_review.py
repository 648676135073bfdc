"""Review of loops (`Stream.iterate`): small deterministic cases that fail
against the README's "Loops" contract."""

from __future__ import annotations

import pytest

from kernel import Dataflow, KernelError, run


def _keyed_loop_feeding_back(make_record, n):
    """A loop on a keyed stream whose feedback carries `make_record(v)` for
    the values that count down from 3; its out is a per-round count."""

    def body(pairs):
        values = pairs.filter(lambda r: isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], int))
        fed = values.map(lambda r: r[1] - 1).filter(lambda v: v > 0)
        return fed.map(make_record), pairs.count()

    flow = Dataflow()
    out = flow.from_iterable([3]).key_by(lambda v: v % 2).iterate(body).collect()
    run(flow, cores=n)
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_keyed_loop_that_feeds_back_triples_fails_naming_the_record(n):
    """README: on a keyed loop "what `feedback` carries must be (key, value)
    pairs too: the first keyed step that meets a record that is not fails,
    naming it (function '(key, value) = record')". A triple `(key, v, "x")`
    is no pair (`kernel.dataflow._errors.is_not_a_pair` says so), yet it is
    read as `(key, v)` by subscripts, its third field silently dropped, and
    the run succeeds (the count gets key 0 and key 1 once each)."""
    with pytest.raises(KernelError, match=r"\(key, value\) = record"):
        _keyed_loop_feeding_back(lambda v: (v % 2, v, "x"), n)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_map_values_on_a_fed_back_record_that_is_no_pair_names_it_as_no_pair(n):
    """A keyed loop feeding back plain ints, whose body starts with
    `map_values` (a keyed step): the run fails blaming the user's lambda
    ("function 'body.<locals>.<lambda>' raised TypeError: cannot unpack
    non-iterable int object"), on every kernel count, where the README says
    the first keyed step names the record as no pair (function
    '(key, value) = record', with the hint that a keyed loop must feed
    pairs back), as count/the exchange do."""

    def body(pairs):
        less = pairs.map_values(lambda v: v - 1)
        return less.filter(lambda kv: kv[1] > 0).map(lambda kv: kv[1]), less  # feeds back ints

    flow = Dataflow()
    flow.from_iterable([3]).key_by(lambda v: v % 2).iterate(body).collect()
    with pytest.raises(KernelError) as caught:
        run(flow, cores=n)
    message = str(caught.value)
    assert "function '(key, value) = record'" in message, message
    assert "a loop on a keyed stream must feed such pairs back" in message, message
