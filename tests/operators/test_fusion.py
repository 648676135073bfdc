"""Operator fusion (`Operator.fuse_upstream`): a keyed aggregate right after
`key_by` computes the keys itself. Fused and unfused runs must give the same
results and the same errors (naming the step whose function failed, and its
record), on one kernel and as the combiner's partial half on several."""

from __future__ import annotations

import operator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernel.runtime._runtime as runtime
from kernel import Dataflow, KernelError, KernelProcessError, run

AGGREGATES = {
    "count": lambda keyed: keyed.count(),
    "sum": lambda keyed: keyed.sum(),
    "reduce": lambda keyed: keyed.reduce(operator.add),
    "fold": lambda keyed: keyed.fold(list, lambda acc, v: [*acc, v]),
}


def outcome(records, aggregate: str, key_fn, cores: int, fused: bool, monkeypatch):
    monkeypatch.setattr(runtime, "FUSION", fused)
    flow = Dataflow("fusion")
    keyed = flow.from_iterable(records, batch_size=7).key_by(key_fn, name="key_by(key)")
    out = AGGREGATES[aggregate](keyed).collect()
    try:
        run(flow, cores=cores)
    except KernelError as exc:
        error = exc.__cause__ if isinstance(exc, KernelProcessError) else exc
        return ("error", str(error).split(" (kernel ")[0])
    if aggregate == "fold":  # arrival order within a key is each kernel's own
        return ("ok", sorted((k, sorted(v)) for k, v in out.items))
    return ("ok", sorted(out.items))


def key(record):
    if record == 13:
        raise ValueError("thirteen")
    return [record] if record == 17 else record % 4  # a list: unhashable


@settings(max_examples=25, deadline=None)
@given(records=st.lists(st.integers(0, 20), max_size=60), aggregate=st.sampled_from(sorted(AGGREGATES)))
def test_fused_and_unfused_give_the_same_results_and_errors_on_one_kernel(records, aggregate):
    with pytest.MonkeyPatch.context() as mp:
        fused = outcome(records, aggregate, key, 1, True, mp)
        apart = outcome(records, aggregate, key, 1, False, mp)
    assert fused == apart
    if fused[0] == "ok":
        expected = {}
        for r in records:
            expected.setdefault(r % 4, []).append(r)
        assert {k for k, _ in fused[1]} == set(expected)


@pytest.mark.parametrize("aggregate", sorted(AGGREGATES))
@pytest.mark.parametrize("records, message", [
    ([1, 2, 3, 13, 4], "key' raised ValueError: thirteen\n  on record: 13"),
    ([1, 2, 17, 3], "unhashable"),
])
def test_a_failure_names_the_same_step_fused_or_not(aggregate, records, message, monkeypatch):
    fused = outcome(records, aggregate, key, 1, True, monkeypatch)
    apart = outcome(records, aggregate, key, 1, False, monkeypatch)
    assert fused == apart and fused[0] == "error" and message in fused[1]
    step = "key_by(key)" if "thirteen" in message else aggregate
    assert f"operator '{step}" in fused[1]


@pytest.mark.parametrize("aggregate", ["count", "sum"])
def test_two_kernels_fuse_the_partial_half_and_agree(aggregate, monkeypatch):
    records = list(range(200)) * 3
    fused = outcome(records, aggregate, lambda r: r % 7, 2, True, monkeypatch)
    apart = outcome(records, aggregate, lambda r: r % 7, 2, False, monkeypatch)
    assert fused == apart == outcome(records, aggregate, lambda r: r % 7, 1, False, monkeypatch)


def test_the_aggregate_really_takes_key_bys_place(monkeypatch):
    """Fused, key_by builds no pairs: its own on_batch never runs."""
    from kernel.operators import KeyBy

    calls = []
    original = KeyBy.on_batch

    def counted(self, port, batch):
        calls.append(1)
        original(self, port, batch)

    monkeypatch.setattr(KeyBy, "on_batch", counted)
    flow = Dataflow()
    out = flow.from_iterable("abcab").key_by(str.upper).count().collect()
    run(flow)
    assert sorted(out.items) == [("A", 2), ("B", 2), ("C", 1)] and calls == []
    monkeypatch.setattr(runtime, "FUSION", False)
    run(flow)
    assert calls
