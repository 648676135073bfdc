"""Review of operator fusion and the plain reads: failing cases found.

Each test compares a fused chain with the same steps run apart
(`runtime.FUSION = False`) and/or a plain loop doing the same calls."""

from __future__ import annotations

import pytest

import kernel.runtime._runtime as runtime
from kernel import Dataflow, KernelError, run


def outcome(build, records, fused, batch_size=64, cores=1):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runtime, "FUSION", fused)
        flow = Dataflow("review")
        out = build(flow.from_iterable(records, batch_size=batch_size)).collect()
        try:
            run(flow, cores=cores)
        except KernelError as exc:
            return ("error", type(exc).__name__, str(exc).split("\n\n")[0])
    return ("ok", out.items)


class Ambiguous:
    """A filter result without a truth value (a numpy array's kind)."""

    def __bool__(self):
        raise ValueError("the truth value is ambiguous")


def test_a_filter_result_without_truth_value_after_a_map_does_not_call_the_map_again():
    """map -> filter, the filter's result for the 2nd record has no truth
    value. Apart: the map is called once per record, then the filter fails
    naming itself, ValueError, record 20. Fused (Python 3.11): the error
    path (`_failing_test`, `_input_of`) calls the map's function on the
    failing record twice more; a map whose function can run only once per
    record (here it pops from a dict) then fails the run with the map's
    KeyError naming 'Map.on_batch' instead of the filter's error."""
    results = {}
    for fused in (False, True):
        table = {1: 10, 2: 20, 3: 30}
        calls = []

        def take(k, table=table, calls=calls):
            calls.append(k)
            return table.pop(k)

        def check(v):
            return Ambiguous() if v == 20 else True

        got = outcome(lambda s: s.map(take, name="take").filter(check, name="check"), [1, 2, 3], fused)
        results[fused] = (got, calls)
    apart, fused = results[False], results[True]
    assert apart[0][0] == "error" and "operator 'check" in apart[0][2] and "on record: 20" in apart[0][2]
    assert fused[0] == apart[0]


def test_a_filter_result_without_truth_value_calls_each_function_once_per_record():
    """The same with a pure map that counts its calls: apart [1, 2, 3]
    (each record once); fused the map's function runs on record 2 three
    times ([1, 2, 2, 2, ...]): README 'side-effecting functions are never
    called twice to find it'."""
    counted = {}
    for fused in (False, True):
        calls = []

        def tenfold(k, calls=calls):
            calls.append(k)
            return k * 10

        got = outcome(lambda s: s.map(tenfold).filter(lambda v: Ambiguous() if v == 20 else True),
                      [1, 2, 3], fused)
        assert got[0] == "error"
        counted[fused] = sorted(calls)
    assert counted[True] == counted[False] == [1, 2, 3]
