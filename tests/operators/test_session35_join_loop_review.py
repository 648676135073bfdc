"""Session 35 review of joins and loops: what a demanding user met.

* A join's two sides are both checked for event time when the flow is
  built: a custom step on the left (which may keep it) left the right
  unchecked, and an untimed source there failed only when records flowed,
  blaming the custom step.
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
