"""Review of event-time windows other than sliding-by-slices: failing
cases found against a brute-force reference of the README's rules."""

from __future__ import annotations

import pytest

from kernel import Dataflow, run
from operators import Session


def sessions_of(events, gap, cores=1):
    flow = Dataflow("review")
    source = flow.from_iterable(events, timestamp=lambda e: e[1], max_delay=1e6)
    out = source.key_by(lambda e: e[0]).map_values(lambda e: e[2]).window(Session(gap)).collect().collect()
    run(flow, cores=cores)
    return sorted((k, w.start, w.end, values) for k, w, values in out.items)


@pytest.mark.parametrize("cores", [1, 2])
def test_an_event_less_than_gap_after_the_previous_joins_its_session(cores):
    # README: "an event joins it when it comes less than `gap` after the
    # previous one". These two are 0.09999999999990905 apart (the float
    # difference is exact here, Sterbenz), under the gap of 0.1, but
    # `t1 + 0.1` rounds down to `t2`, and the strategy compares
    # `t2 < t1 + gap`: two sessions come out instead of one.
    t1, t2 = 1343.6424411240123, 1343.7424411240122
    assert t2 - t1 < 0.1
    got = sessions_of([("a", t1, 1), ("a", t2, 2)], 0.1, cores)
    assert [(k, start, values) for k, start, _, values in got] == [("a", t1, [1, 2])]


def test_a_large_time_neither_joins_by_the_gap_nor_raises_time_too_large():
    # At 2**53 floats are 2 apart, less than the gap of 3.0, so README's
    # TimeTooLarge rule ("floats further apart than a window's step") does
    # not apply and the sessions should be exact: events 2 apart (< gap 3)
    # are one session. But `t + 3.0` rounds to `t + 2`, so the first
    # session is [t, t + 2), two seconds long for Session(3.0), and the
    # second event starts a session of its own. Either one session
    # [2**53+2, 2**53+4+3) or a TimeTooLarge error, not a silent split.
    t = 2.0**53 + 2
    try:
        got = sessions_of([("a", t, 1), ("a", t + 2, 2)], 3.0)
    except Exception as exc:  # TimeTooLarge named in the error would be acceptable
        assert "too large" in str(exc)
        return
    assert [(k, start, values) for k, start, _, values in got] == [("a", t, [1, 2])]
