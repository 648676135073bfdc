"""Found by a review of the watchdog's report naming the step and function
blocked (kernel/runtime/_blocked_step.py): reading the frames must not ask
the user's objects in them anything."""

from __future__ import annotations

from test_session39_watchdog_steps import BLOCKED, seen  # noqa: F401 (the fixture)

from kernel import Dataflow, run


class Lazy:
    """A user's object whose `__class__` is computed, and fails (a lazy
    object's, which would first build what it stands for)."""

    def __init__(self, reports) -> None:
        self.reports = reports

    @property
    def __class__(self):
        raise RuntimeError("built on first use, and the build fails")

    def lookup(self, x):
        if x == 2:
            assert self.reports.arrived.wait(10), "no report came"
        return x


def test_a_step_whose_function_is_a_method_of_an_object_with_a_failing_class_is_named(seen):  # noqa: F811
    """The function's `self` was asked its __class__ (isinstance, to tell
    an operator's method): it raised, and the report named the activation
    alone, "from_iterable (step 0)"; it ran the user's code on the
    watchdog's thread. An operator is now told by the type."""
    flow = Dataflow("blocked")
    out = flow.from_iterable(range(4)).map(lambda x: x).map(Lazy(seen).lookup).collect()
    run(flow)
    assert out.items == [0, 1, 2, 3]
    message = seen.records[0].getMessage()
    assert message.startswith(
        f"[kernel 0] operator 'map(lookup) (step 2)', function '{__name__}.Lazy.lookup', run in the "
        f"activation of from_iterable (step 0), {BLOCKED} for 0.3 s"), message
