"""What a step emits in `open()` goes on before anything else it hands on
(README, "The three API levels"), also where the step before it emits in
its `open()` too. What the steps emitted while they opened was handed on in
the order it was made: the upstream step's first, so the step after it
handed on its output for those records before its own open's (a header
after the first rows)."""

from __future__ import annotations

import pytest

from kernel import Dataflow, Operator, OperatorError, run


class EmitsAtOpen(Operator):
    """Emits ["opened"] in open(), then passes its input on."""

    def open(self, context):
        self.emit(["opened"])

    def on_batch(self, port, batch):
        self.emit(batch)


class Header(Operator):
    """Emits its header, (kernel, "header"), in open(); then (kernel, record)."""

    def open(self, context):
        self.index = context.index
        self.emit([(self.index, "header")])

    def on_batch(self, port, batch):
        self.emit([(self.index, x) for x in batch])


@pytest.mark.parametrize("cores", [1, 2, 3])
@pytest.mark.parametrize("exchange", [False, True])
def test_a_steps_open_output_goes_on_before_what_its_upstreams_open_output_made_it_hand_on(cores, exchange):
    flow = Dataflow("headers")
    stream = flow.from_iterable(range(6)).apply(EmitsAtOpen)
    if exchange:
        stream = stream.key_by(str).map(lambda pair: pair[1])
    out = stream.apply(Header).collect()
    run(flow, cores=cores)
    by_kernel: dict = {}
    for index, x in out.items:
        by_kernel.setdefault(index, []).append(x)
    assert sorted(by_kernel) == list(range(cores))
    assert all(seen[0] == "header" for seen in by_kernel.values()), by_kernel
    assert sorted(x for seen in by_kernel.values() for x in seen[1:] if x != "opened") == list(range(6))
    assert sum(seen.count("opened") for seen in by_kernel.values()) == cores
    assert all(seen.count("header") == 1 for seen in by_kernel.values())


class EmitsAnInt(Operator):
    def on_batch(self, port, batch):
        self.emit(7)


def test_a_non_batch_emitted_is_named_with_its_article():
    """It said "given a int"."""
    flow = Dataflow("an int")
    flow.from_iterable([1]).apply(EmitsAnInt, name="emits an int").collect()
    with pytest.raises(OperatorError, match=r"but was given an int: 7 \(one record: emit\(\[record\]\)\)"):
        run(flow)
