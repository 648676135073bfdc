"""Session 35 review of joins and loops: what a demanding user met.

* A join's two sides are both checked for event time when the flow is
  built: a custom step on the left (which may keep it) left the right
  unchecked, and an untimed source there failed only when records flowed,
  blaming the custom step.
* A join with `ttl=` or `distinct(within=)` inside a loop's body is checked
  again once the loop's feedback is connected, as its next round's input:
  a count fed back was found only as records flowed, the error telling to
  give the sources timestamps (they had them), and a custom step in the
  feedback was not among those the error said might drop them.
* A join whose one side's input has ended (on every kernel) keeps none of
  the other side's values, which nothing can meet any more: a bounded
  table joined with an endless stream kept every value of the stream.
* A loop without `max_rounds` whose run goes on for 1,000 rounds says so
  (it never ends if it never converges, and said nothing).
* A join's `ttl` too large for a float is refused when the flow is built.
"""

from __future__ import annotations

import re

import pytest

from kernel import Dataflow, KernelError, Operator, run
from operators import Tumbling

LOST_AT_SOURCE = ("it is lost on the way at step from_iterable#2 (step 3), a source without timestamp=: "
                  "give the source timestamp=...")


class Passes(Operator):
    """Hands its batches on as they are (timestamps too): a custom step."""

    def on_batch(self, port, batch):
        self.emit(batch)


@pytest.mark.parametrize("how", ["ttl", "window"])
def test_a_joins_right_side_is_checked_for_event_time_behind_a_custom_step_on_the_left(how):
    flow = Dataflow()
    left = flow.from_iterable([("a", 1.0)], timestamp=lambda e: e[1]).apply(Passes).key_by(lambda e: e[0])
    right = flow.from_iterable([("a", 1.0)]).key_by(lambda e: e[0])
    with pytest.raises(KernelError, match=re.escape(LOST_AT_SOURCE)):
        if how == "ttl":
            left.join(right, ttl=1.0)
        else:
            left.join(right, Tumbling(1.0))


def _loop_around(step: str, feedback: str):
    """A flow whose loop body holds `step` ('ttl': a join with ttl=, or
    'distinct': distinct(within=)) fed back through `feedback` ('count': a
    keyed aggregate, or 'custom': a step of one's own that drops the times)."""
    flow = Dataflow()
    source = flow.from_iterable([(0.5, "a", 3)], timestamp=lambda e: e[0])
    other = flow.from_iterable([(0.6, "a", "x")], timestamp=lambda e: e[0]).key_by(lambda e: e[1])

    def body(walks):
        if step == "ttl":
            met = walks.key_by(lambda e: e[1]).join(other, ttl=1.0, name="pairs").map(lambda p: p[1][0])
        else:
            met = walks.distinct(within=Tumbling(1.0), name="firsts")
        on = met.filter(lambda e: e[2] > 0)
        if feedback == "count":
            counted = on.key_by(lambda e: e[1]).map_values(lambda e: e[2]).count(name="per key")
            return counted.map(lambda p: (0.5, p[0], 0)), met
        return on.map(lambda e: (e[0], e[1], e[2] - 1)).apply(DropsTimes, name="drops"), met

    return flow, source, body


class DropsTimes(Operator):
    def on_batch(self, port, batch):
        self.emit(list(batch))


@pytest.mark.parametrize("step, label", [("ttl", "pairs (step 6)"), ("distinct", "firsts (step 5)")])
def test_a_step_needing_event_time_in_a_loop_whose_feedback_loses_it_is_refused_when_built(step, label):
    flow, source, body = _loop_around(step, "count")
    with pytest.raises(KernelError, match=re.escape(
            f"{label}: {'a join with ttl=' if step == 'ttl' else 'distinct(within=...)'} needs event time, "
            "but it is lost on the way at step per key (step ")) as info:
        source.iterate(body)
    assert "a keyed aggregate (its results carry no event time)" in str(info.value)
    # the loop is abandoned: the flow still runs without it
    out = source.map(lambda e: e[2]).collect()
    run(flow)
    assert out.items == [3]


@pytest.mark.parametrize("step, label, drops", [("ttl", "pairs (step 6)", "drops (step 10)"),
                                                ("distinct", "firsts (step 5)", "drops (step 8)")])
def test_a_custom_step_in_a_loops_feedback_is_named_when_its_records_come_without_times(step, label, drops):
    flow, source, body = _loop_around(step, "custom")
    source.iterate(body).collect()
    with pytest.raises(KernelError, match=re.escape(label)) as info:
        run(flow)
    assert str(info.value).endswith(f"steps on the way that may drop them: {drops}")


# -- a join whose one side has ended keeps no more of the other's values ------------------


class EndSignal(Operator):
    """Sets `event` when its input ends: on one kernel, after the END it
    shares an upstream with has been handed to the join too."""

    event = None

    def on_batch(self, port, batch):
        pass

    def on_end(self):
        type(self).event.set()


@pytest.mark.parametrize("ttl", [None, 1000.0])
def test_a_join_keeps_none_of_the_other_sides_values_once_one_side_has_ended(monkeypatch, ttl):
    """A bounded table joined with a stream that goes on (enrichment): once
    the table's input has ended, nothing more can meet the stream's values,
    and the join kept every one of them to the end of the run (memory grew
    with the stream, for nothing). Every pair still comes."""
    import asyncio

    from operators import KeyedJoin

    most_held = [0, 0]  # values each side held, at most, after a batch
    on_batch = KeyedJoin.on_batch

    def probe(self, port, batch):
        returned = on_batch(self, port, batch)
        for side, values in enumerate(self.sides):
            most_held[side] = max(most_held[side], sum(map(len, values.values())))
        return returned

    monkeypatch.setattr(KeyedJoin, "on_batch", probe)
    ended = asyncio.Event()
    monkeypatch.setattr(EndSignal, "event", ended)
    users = [("u1", "ann"), ("u2", "bob"), ("u1", "ann again")]

    async def clicks():
        await asyncio.wait_for(ended.wait(), 10)
        for i in range(300):
            yield (f"u{i % 3}", i, float(i))

    flow = Dataflow()
    table = flow.from_iterable(users, timestamp=lambda u: 0.0).key_by(lambda u: u[0])
    table = table.map_values(lambda u: u[1])
    table.apply(EndSignal)
    stream = flow.from_async_iterable(clicks, timestamp=lambda c: c[2], batch_size=16)
    pairs = table.join(stream.key_by(lambda c: c[0]).map_values(lambda c: c[1]), ttl=ttl).collect()
    run(flow)
    expected = [(key, (name, i)) for i in range(300) for key, name in users if key == f"u{i % 3}"]
    assert sorted(pairs.items) == sorted(expected)
    assert most_held == [3, 0]


class PortsTold(Operator):
    """Two inputs; notes each batch's port and size, and when it is told
    that a port has ended (`_port_ended`, which the join has)."""

    def open(self, context):
        self.seen: list = []

    def on_batch(self, port, batch):
        self.seen.append((port, len(batch)))

    def _port_ended(self, port):
        self.seen.append((port, "ended"))

    def on_end(self):
        self.emit([self.seen])


@pytest.mark.parametrize("cores", [1, 2, 3])
def test_a_port_is_told_ended_once_after_every_channel_of_it_has_ended(cores):
    """On several kernels a port has a channel from each: it has ended only
    once all of them have (told after the first, a join dropped values
    that the other kernels' records still had to meet)."""
    flow = Dataflow()
    left = flow.from_iterable(range(40), batch_size=3).key_by(lambda n: n % 7)
    right = flow.from_iterable(range(100, 125), batch_size=2).key_by(lambda n: n % 5)
    out = left.apply(PortsTold, inputs=(right,)).collect()
    run(flow, cores=cores)
    assert len(out.items) == cores
    totals = [0, 0]
    for seen in out.items:
        for port in (0, 1):
            told = [at for at, (p, n) in enumerate(seen) if p == port and n == "ended"]
            assert len(told) == 1, seen
            assert all(p != port for p, _ in seen[told[0] + 1:])  # nothing of it after that
            totals[port] += sum(n for p, n in seen if p == port and n != "ended")
    assert totals == [40, 25]


def test_a_joins_ended_ports_are_kept_in_its_snapshots_and_cut_alike():
    import logging

    from kernel import TimedBatch
    from operators import KeyedJoin

    class Context:
        logger = logging.getLogger("test")
        index = 0

    def wired():
        join = KeyedJoin(ttl=5.0)
        join.name, join.context, join.out = "join", Context(), []
        join.emit = join.out.extend
        join.open(join.context)
        return join

    join = wired()
    join.on_batch(0, TimedBatch([("k", "l1")], [1.0]))
    join.on_batch(1, TimedBatch([("k", "r1")], [1.5]))
    join._port_ended(1)  # no more right values: the left ones go, later ones are not kept
    join.on_batch(0, TimedBatch([("k", "l2")], [2.0]))
    assert join.out == [("k", ("l1", "r1")), ("k", ("l2", "r1"))]
    assert {k: len(v) for k, v in join.sides[0].items()} == {}
    snapshot = join.on_epoch(1)
    resumed = wired()
    resumed.restore(snapshot)
    resumed.on_batch(0, TimedBatch([("k", "l3")], [3.0]))
    assert resumed.out == [("k", ("l3", "r1"))] and not resumed.sides[0]
    older = dict(snapshot, states={"left": {}, "right": {"k": [(1.5, "r1")]}})
    del older["ended"]  # a snapshot from before the join kept its ended ports
    resumed = wired()
    resumed.restore(older)
    resumed.on_batch(0, TimedBatch([("k", "l3")], [3.0]))
    assert resumed.out == [("k", ("l3", "r1"))] and len(resumed.sides[0]["k"]) == 1
    # a rescaled resume: a port has ended only where every old kernel had it end
    other = dict(snapshot, states={"left": {}, "right": {}})  # another kernel's, its keys apart
    both = wired().rescale([snapshot, other], lambda key: True)
    assert both["ended"] == [False, True]
    assert wired().rescale([snapshot, dict(other, ended=[False, False])], lambda key: True)["ended"] == [
        False, False]


# -- a loop that goes on and on says so ------------------------------------------------


@pytest.mark.parametrize("cores", [1, 2])
def test_a_loop_without_max_rounds_says_so_once_a_run_has_gone_on_for_a_thousand_rounds(capfd, cores):
    """A loop that never converges runs for ever, silently (the README says
    so): after 1,000 rounds of one run, a warning says which loop it is and
    what would bound it, once (kernel 0's, also from a kernel process),
    and the loop goes on. This one ends after 1,050 rounds."""
    import logging
    import sys

    flow = Dataflow()
    out = flow.from_iterable([1050]).iterate(
        lambda n: (n.filter(lambda v: v > 0).map(lambda v: v - 1),) * 2, name="countdown").collect()
    written = logging.StreamHandler(sys.stderr)
    written.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logging.getLogger("kernel").addHandler(written)
    try:
        run(flow, cores=cores)
    finally:
        logging.getLogger("kernel").removeHandler(written)
    assert sorted(out.items) == list(range(1050))
    # (a stall report may name the loop too, on a busy machine)
    said = [line for line in capfd.readouterr().err.splitlines() if "countdown: round" in line]
    assert said == ["WARNING [kernel 0] countdown: round 1000 of one run, and its rounds still feed records "
                    "back (1 in the last one): a loop whose rounds always feed something back never ends; "
                    "give it max_rounds=N if it may not converge"]


class FieldsOperator(Operator):
    """Attributes kept in a dict, read by `__getattr__` (a KeyError, not an
    AttributeError, for a name it lacks): an input's end did not ask it for
    the join's hook (`_port_ended`), whose lookup would raise."""

    def open(self, context):
        self.__dict__["_fields"] = {"seen": 0}

    def __getattr__(self, name):
        return self.__dict__["_fields"][name]

    def on_batch(self, port, batch):
        self._fields["seen"] += len(batch)

    def on_end(self):
        self.emit([self._fields["seen"]])


def test_an_operator_with_a_getattr_of_its_own_is_not_asked_for_the_joins_hook():
    flow = Dataflow()
    left, right = flow.from_iterable(range(5)), flow.from_iterable(range(3))
    out = left.apply(FieldsOperator, inputs=(right,)).collect()
    run(flow)
    assert out.items == [8]


def test_a_ttl_too_large_for_a_float_is_refused_when_the_flow_is_built():
    """`ttl=10**400` passed the check (an int below +inf) and failed as
    records flowed, `time + ttl` overflowing a float (`function 'join'
    raised OverflowError`)."""
    flow = Dataflow()
    timed = flow.from_iterable([("a", 1.0)], timestamp=lambda e: e[1]).key_by(lambda e: e[0])
    refused = "ttl must be a finite number of seconds >= 0 or None, got 1000"
    with pytest.raises(ValueError, match=re.escape(refused)):
        timed.join(timed, ttl=10**400)
    out = timed.join(timed, ttl=2**1000).collect()  # large, but a float
    run(flow)
    assert out.items == [("a", (("a", 1.0), ("a", 1.0)))]
