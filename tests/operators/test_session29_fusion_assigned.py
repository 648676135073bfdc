"""A fused chain's error path calls no function twice on Python 3.12+.

3.12 inlines comprehensions (PEP 709) and undoes their `for` variables when
an exception leaves them, so the fused chain's error path used to work the
failing step's record out again by calling the record-changing steps before
it once more, and a filter's function once more to tell whether it raised
or its result's test did: a function that can run once per record (it pops
from a dict, it counts) then failed the run with its own error, or was
called twice (README: "side-effecting functions are never called twice").
From 3.12 the steps that make a variable bind it with `:=`, which stays in
the frame (`operators._fusion._ASSIGNED`), and the instruction that failed
tells a filter's call from its test.

The suite runs on 3.11, so the tests below also force that form there
(`_ASSIGNED`), for the errors a function raises; a filter's result without
a truth value takes 3.11's own way there (tests/operators/test_fusion_review.py
covers it on whichever Python runs them: it failed on 3.12.1 and 3.13.0
before)."""

from __future__ import annotations

import kernel.operators._fusion as fusion
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fusion_chains import chains
from test_fusion_chains import outcome as chain_outcome

import kernel.runtime._runtime as runtime
from kernel import Dataflow, KernelError, run


@pytest.fixture(params=["this Python's form", "assigned"])
def form(request, monkeypatch):
    if request.param == "assigned":
        monkeypatch.setattr(fusion, "_ASSIGNED", True)
    return request.param


def outcome(build, records, fused, batch_size=64):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "FUSION", fused)
        flow = Dataflow("assigned")
        out = build(flow.from_iterable(records, batch_size=batch_size)).collect()
        try:
            run(flow)
        except KernelError as exc:
            return ("error", type(exc).__name__, str(exc).split("\n\n")[0])
    return ("ok", out.items)


def pops_once(table: dict, calls: list):
    def take(k):
        calls.append(k)
        return table.pop(k)  # a second call on the same record raises KeyError
    return take


def fails_at(bad):
    def check(v):
        if v == bad:
            raise ValueError(f"bad value {v!r}")
        return v
    return check


@pytest.mark.parametrize("shape", ["map", "key_by", "map_values"])
def test_a_step_after_one_that_runs_once_a_record_fails_naming_itself(form, shape):
    """take (pops) -> a step that raises on 20: apart, the second step fails
    naming itself and record 20 (its input) after take ran once a record
    up to it; fused, the same, take not called again."""
    results = {}
    for fused in (False, True):
        calls: list = []
        take = pops_once({1: 10, 2: 20, 3: 30}, calls)
        check = fails_at(20)

        def build(stream, take=take, check=check):
            stream = stream.map(take, name="take")
            if shape == "map":
                return stream.map(check, name="check")
            if shape == "key_by":
                return stream.key_by(check, name="check")
            return stream.key_by(lambda v: v % 3, name="key").map_values(check, name="check")

        results[fused] = (outcome(build, [1, 2, 3], fused), sorted(calls))
    apart, fused = results[False], results[True]
    assert apart[0][0] == "error" and "operator 'check" in apart[0][2]
    assert ("on record: 20" if shape != "map_values" else "on record: (2, 20)") in apart[0][2]
    assert fused == apart


def test_a_filter_result_without_truth_value_after_a_map_names_the_filter_and_calls_the_map_once():
    """On whichever Python runs it (3.11's frame, or 3.12+'s `:=` and the
    failing instruction)."""
    results = {}
    for fused in (False, True):
        calls: list = []
        take = pops_once({1: 10, 2: 20, 3: 30}, calls)
        tested: list = []

        def check(v, tested=tested):
            tested.append(v)
            return Ambiguous() if v == 20 else True

        got = outcome(lambda s, take=take, check=check: s.map(take, name="take").filter(check, name="check"),
                      [1, 2, 3], fused)
        results[fused] = (got, sorted(calls), sorted(tested))
    apart, fused = results[False], results[True]
    assert apart[0][0] == "error" and "operator 'check" in apart[0][2] and "on record: 20" in apart[0][2]
    assert fused == apart


class Ambiguous:
    def __bool__(self):
        raise ValueError("the truth value is ambiguous")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 20), max_size=40), chains(), st.sampled_from([1, 64]))
def test_the_assigned_form_gives_the_same_records_and_errors_as_apart(records, chain, batch_size):
    """Any chain of map, filter, flat_map, key_by, map_values, inspect with
    the steps' variables bound by `:=` (taken on 3.11 too, here), except a
    filter result without a truth value (3.11 tests it on another line)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fusion, "_ASSIGNED", True)
        fused = chain_outcome(records, chain, 1, True, batch_size)
    assert fused == chain_outcome(records, chain, 1, False, batch_size)


def test_a_filter_function_that_raises_is_called_as_apart_and_no_more(form):
    """map -> filter whose function raises on 20, records [1, 2, 3, 2]:
    apart the filter's function meets 10, then 20 and fails; fused, the
    same calls (a raise is not taken for a result whose test failed,
    which apart had called the function on every record first)."""
    results = {}
    for fused in (False, True):
        tested: list = []

        def check(v, tested=tested):
            tested.append(v)
            if v == 20:
                raise ValueError("bad value 20")
            return True

        def build(stream, check=check):
            return stream.map(lambda k: k * 10, name="tenfold").filter(check, name="check")

        got = outcome(build, [1, 2, 3, 2], fused)
        results[fused] = (got, tested)
    apart, fused = results[False], results[True]
    assert apart == (("error", "OperatorError", apart[0][2]), [10, 20])
    assert "operator 'check" in apart[0][2] and "on record: 20" in apart[0][2]
    assert fused == apart
