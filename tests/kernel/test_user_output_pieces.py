"""A user's operator (`apply()`) that emits a large list in on_batch,
on_watermark or on_end: the runtime hands it on a piece a tick, as the
built-in steps do their own large outputs, with the host's turns between
(exact on a virtual clock); every record arrives once, in the order
emitted, and nothing that came after (a batch, a watermark, the end of
input) overtakes one (against the operator's own record of what it
emitted, with tiny pieces patched in); on two kernels too; and a failure
in a later piece still names the step and the record."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_budget import Costly, slices, with_host
from test_inbox_deferral import Notes  # notes records, watermarks and the end in order

import kernel.runtime._user_pieces as user_pieces
from kernel import Dataflow, Operator, OperatorError, Source, VirtualClock, run, run_async


class Burst(Operator):
    """Emits `n` records in the handler named `where` (on its first batch,
    its first watermark or at the end), then `after` more in that handler."""

    def __init__(self, where: str, n: int, after: int = 0) -> None:
        self.where, self.n, self.after = where, n, after

    def _burst(self, where: str) -> None:
        if self.where == where:
            self.where = None  # once
            self.emit(list(range(self.n)))
            if self.after:
                self.emit(list(range(self.n, self.n + self.after)))

    def on_batch(self, port, batch):
        self._burst("on_batch")

    def on_watermark(self, watermark):
        self._burst("on_watermark")

    def on_end(self):
        self._burst("on_end")


@pytest.mark.parametrize("where", ["on_batch", "on_watermark", "on_end"])
async def test_a_large_emit_goes_on_a_piece_a_slice_with_the_host_between(where):
    """10,000 records in one emit: the next step gets them 1,024 a tick,
    each piece costing it 1.024 ms (more than the budget), so the host runs
    between any two, in parts of 250 once two pieces in a row have taken
    more than the budget (`PieceSize`); all 10,000 went on in one
    activation before."""
    clock = VirtualClock()
    flow = Dataflow("burst")
    flow.trace = trace = []
    out = (flow.from_iterable([1.0], timestamp=float).apply(lambda: Burst(where, 10_000), name="burst")
               .apply(lambda: Costly(clock, trace, per_record=lambda x: 1e-6), name="costly").collect())
    await with_host(flow, clock)
    assert out.items == list(range(10_000))
    sizes = [[n for _, n in one] for one in slices(trace)]
    assert [n for one in sizes for n in one] == [1024] * 3 + ([250] * 4 + [24]) * 6 + [250] * 3 + [34]
    assert sizes[:3] == [[1024]] * 3 and max(map(sum, sizes)) == 1024, sizes


async def test_a_large_emit_in_on_end_that_hands_back_a_future_goes_on_before_the_step_waits():
    """on_end emits 10,000 records and returns a task of its own: nothing
    would hand a rest on after it, so the records go on at once, all of
    them, before the step's end waits for the task."""

    class Flushing(Burst):
        def on_end(self):
            super().on_end()
            return asyncio.ensure_future(asyncio.sleep(0))

    flow = Dataflow("flushing")
    out = flow.from_iterable([1]).apply(lambda: Flushing("on_end", 10_000, after=5)).collect()
    await run_async(flow)
    assert out.items == list(range(10_005))


class Script(Source):
    """On kernel 0, each poll emits a batch and then advances the
    watermark, as its script says: `(records, watermark or None)`."""

    def __init__(self, polls) -> None:
        self.polls = list(polls)

    def open(self, context):
        if context.index != 0:
            self.polls = []

    def poll(self):
        if not self.polls:
            return False
        records, watermark = self.polls.pop(0)
        if records:
            self.emit(list(records))
        if watermark is not None:
            self.advance_watermark(watermark)
        return bool(self.polls)


class Echo(Operator):
    """Hands each batch on in the emits its plan says (sizes, cycled), and
    at each watermark and at the end emits a few records of its own; notes
    in `emitted` everything it emitted, and each watermark it was given,
    in order: the reference for what the step after it must see."""

    def __init__(self, sizes, per_watermark, at_end, emitted) -> None:
        self.sizes, self.per_watermark, self.at_end, self.emitted = sizes, per_watermark, at_end, emitted
        self.turn = 0

    def _emit(self, records):
        self.emitted.extend(("record", r) for r in records)
        self.emit(list(records))

    def on_batch(self, port, batch):
        at = 0
        while at < len(batch):
            size = self.sizes[self.turn % len(self.sizes)]
            self.turn += 1
            self._emit(batch[at:at + size])
            at += size

    def on_watermark(self, watermark):
        self._emit([("made at", watermark, i) for i in range(self.per_watermark)])
        self.emitted.append(("watermark", watermark))

    def on_end(self):
        self._emit([("at the end", i) for i in range(self.at_end)])
        self.emitted.append(("end",))


_INF = float("inf")
polls = st.lists(st.tuples(st.lists(st.integers(0, 99), max_size=12),
                           st.one_of(st.none(), st.floats(0, 100, allow_nan=False))), max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=polls, sizes=st.lists(st.integers(1, 9), min_size=1, max_size=4),
       per_watermark=st.integers(0, 7), at_end=st.integers(0, 7), fan_out=st.booleans())
def test_every_record_goes_on_once_in_order_and_nothing_overtakes_one(monkeypatch, script, sizes,
                                                                       per_watermark, at_end, fan_out):
    """With pieces of 2 past 2 records (so that most emits go in pieces),
    the step after sees exactly what the operator emitted, in order, with
    each watermark after the records emitted before it went on and the end
    last; behind a fan-out (the next steps' inboxes) as chained."""
    monkeypatch.setattr(user_pieces, "LARGE_OUTPUT", 2)
    monkeypatch.setattr(user_pieces, "PIECE", 2)
    # the watermarks the script makes, as the step after is given them: those that advance
    expected_watermarks, top = [], float("-inf")
    for _, watermark in script:
        if watermark is not None and watermark > top:
            expected_watermarks.append(watermark)
            top = watermark
    emitted, seen, seen_too = [], [], []
    flow = Dataflow("echo")
    echoed = (flow.source(lambda: Script(script), name="script")
                  .apply(lambda: Echo(sizes, per_watermark, at_end, emitted)))
    echoed.apply(lambda: Notes(seen, {}))
    if fan_out:
        echoed.apply(lambda: Notes(seen_too, {}))
    run(flow)
    assert [w for kind, *w in emitted if kind == "watermark"] == [[w] for w in [*expected_watermarks, _INF]]
    assert emitted[-1] == ("end",)
    assert seen == emitted
    if fan_out:
        assert seen_too == emitted


def test_two_kernels_get_every_record_of_a_large_emit():
    """Each kernel's operator emits 20,000 records at its end (then 3 more);
    a keyed count after the exchange counts each once."""

    class Ending(Operator):
        def on_batch(self, port, batch):
            pass

        def on_end(self):
            self.emit([i % 100 for i in range(20_000)])
            self.emit([1000, 1001, 1002])

    flow = Dataflow("two")
    out = flow.from_iterable(range(4)).apply(Ending).key_by(lambda r: r).count().collect()
    run(flow, cores=2)
    assert sorted(out.items) == sorted([(k, 400) for k in range(100)] + [(k, 2) for k in (1000, 1001, 1002)])


def test_a_failure_in_a_later_piece_names_its_step_and_record():
    """The map after fails on record 9,000, in the ninth piece: its error
    names the map's function and the record, as it would at once."""

    def picky(x):
        if x == 9_000:
            raise ValueError("no 9000")
        return x

    flow = Dataflow("failing")
    flow.from_iterable([1]).apply(lambda: Burst("on_end", 10_000), name="burst").map(picky).collect()
    with pytest.raises(OperatorError) as caught:
        run(flow)
    text = str(caught.value)
    assert "picky" in text and "9000" in text and "no 9000" in text, text


def test_a_handler_that_fails_after_a_large_emit_names_itself_and_hands_on_nothing_more():
    class Failing(Burst):
        def on_end(self):
            super().on_end()
            raise RuntimeError("broke after emitting")

    flow = Dataflow("failing")
    flow.from_iterable([1]).apply(lambda: Failing("on_end", 10_000), name="failing").collect()
    with pytest.raises(OperatorError, match="broke after emitting") as caught:
        run(flow)
    assert "Failing.on_end" in str(caught.value)
