"""Session 35 review of joins and loops: what a demanding user met.

* A join's two sides are both checked for event time when the flow is
  built: a custom step on the left (which may keep it) left the right
  unchecked, and an untimed source there failed only when records flowed,
  blaming the custom step.
"""

from __future__ import annotations

import re

import pytest

from kernel import Dataflow, KernelError, Operator
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
