"""README review: promises of the README that the code does not keep.

Each test asserts what README.md says, so each fails on the code as it is;
the README section and words are quoted in the test's docstring.
"""

from __future__ import annotations

import socket

import pytest

from kernel import Dataflow, KernelError, Operator, run


def test_an_operators_result_is_handed_back_to_the_caller_after_the_run():
    """"The three API levels", Mid: handlers include "`result()` (a value
    handed back to the caller after the run)". A user's operator gets no
    handle: `apply()` returns a plain Stream, `run()` returns None, and the
    value is gathered by the runtime and dropped."""

    class Counter(Operator):
        def open(self, context):
            self.n = 0

        def on_batch(self, port, batch):
            self.n += len(batch)

        def result(self):
            return {"seen": self.n}

    flow = Dataflow("result")
    stream = flow.from_iterable(range(7)).apply(Counter)
    returned = run(flow)
    reachable = [returned, *vars(stream).values()]
    reachable += [getattr(stream, name, None) for name in ("result", "results", "value", "items")]
    assert any(value == {"seen": 7} or value == [{"seen": 7}] for value in reachable)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_with_metrics_on_a_chain_with_two_count_changing_steps_is_not_fused():
    """"Operators" said that with metrics on a filter "stays apart"; the
    code fuses a chain with one such step (counted step by step, as
    "Metrics" says) and keeps apart a chain with two: the README now says
    so. Steps apart call their functions step by step, fused ones record
    by record."""
    def calls_with(filters: int, metrics: bool = True) -> list[tuple[str, int]]:
        calls: list[tuple[str, int]] = []
        flow = Dataflow("metrics-fusion")
        stream = flow.from_iterable([1, 2, 3]).inspect(lambda x: calls.append(("a", x)))
        for _ in range(filters):
            stream = stream.filter(lambda x: True)
        stream.inspect(lambda x: calls.append(("b", x))).collect()
        run(flow, dashboard=f"127.0.0.1:{_free_port()}" if metrics else None)
        return calls

    fused = [("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3), ("b", 3)]
    apart = [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2), ("b", 3)]
    assert calls_with(1) == fused
    # (two filters: fused without metrics, kept apart with them; a filter then a
    # flat_map are apart either way, a flat_map starting a chain of its own)
    assert calls_with(2, metrics=False) == fused
    assert calls_with(2) == apart


@pytest.mark.parametrize("kernels, groups", [(171, 512), (683, 2048)])
def test_key_groups_are_the_power_of_two_at_or_above_one_and_a_half_times_the_kernels(kernels, groups):
    """"Rescale on resume": "a run has a fixed number of key groups ...
    (128, or the power of two at or above 1.5x the kernels when that is
    more)". 1.5 x 171 = 256.5, whose power of two at or above is 512; the
    code floors 1.5 x kernels first and picks 256 (likewise 683 -> 1024.5)."""
    from kernel.dataflow._key_groups import default_key_groups

    assert default_key_groups(kernels) == groups
    assert default_key_groups(kernels) >= 1.5 * kernels


@pytest.mark.parametrize("cores", [1, 2])
def test_distinct_of_unhashable_records_names_the_record_not_a_key_by_pair(cores):
    """"When a function raises": the error "shows the offending record",
    and a key that cannot be hashed is reported from "whichever keyed step
    meets it first". `distinct()` on a plain stream (no key_by anywhere)
    reports the record `[1]` as the pair `([1], [1])` and blames "the
    function given to key_by", which the user never called."""
    flow = Dataflow("distinct-lists")
    flow.from_iterable([[1], [1], [2]]).distinct().collect()
    with pytest.raises(KernelError) as raised:  # (on two cores: kernel N failed: OperatorError: ...)
        run(flow, cores=cores)
    message = str(raised.value)
    assert "on record: [1]\n" in message + "\n"
    assert "must be hashable" in message
    assert "key_by" not in message


def test_name_is_accepted_by_window_as_by_any_method():
    """"Operators": "Every step gets a name (`map(parse)`, or `name=` on any
    method) that errors and logs use." `KeyedStream.window(w, name=...)`
    is a TypeError: window() takes only `late=`."""
    from operators import Tumbling

    flow = Dataflow("window-name")
    keyed = flow.from_iterable([0.5], timestamp=lambda e: e).key_by(lambda e: 0)
    keyed.window(Tumbling(1.0), name="per second").count().collect()
    run(flow)
