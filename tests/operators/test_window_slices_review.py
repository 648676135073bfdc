"""Review of sliding windows by slices (8f9bfb7, 02dd4e9): cases that break."""

from __future__ import annotations

import pytest
from test_windows import by_window, keyed_values, source

from kernel import Dataflow, KernelError, VirtualClock, run
from operators import Sliding, Window


def counts(window, events, cores, max_delay=0.0, batch_size=1):
    flow = Dataflow()
    w = keyed_values(source(flow, events, max_delay=max_delay, batch_size=batch_size)).window(window)
    out = w.count()
    handle = out.collect()
    run(flow, cores=cores, clock=VirtualClock())
    return by_window(handle.items), out.late_count.value


def test_a_slice_number_too_large_for_p_plus_a_half_keeps_its_windows():
    """Slice p goes as the float p + 0.5, which floats hold exactly only
    while |p| < 2**52: at t = 2**52 + 1 with step 1.0 (times exact, windows
    exact on one kernel), 2**52 + 1.5 rounds to 2**52 + 2 and the owner
    merges the slice into the next slice's windows."""
    t = float(2**52 + 1)
    events = [("k", t, 1), ("k", t, 1)]  # one per kernel on two
    expected = {("k", Window(t - 1.0, t + 1.0)): 2, ("k", Window(t, t + 2.0)): 2}
    assert counts(Sliding(2.0, 1.0), events, 1) == (expected, 0)
    assert counts(Sliding(2.0, 1.0), events, 2) == (expected, 0)


def test_microseconds_taken_for_seconds_give_the_one_kernel_windows():
    """t = 1.7e15 (time.time() * 1e6 read as seconds): floats are 0.25
    apart, slices of 0.25 s hold their events, but slice numbers are
    beyond 2**52 (6.8e15)."""
    window = Sliding(1.0, 0.25)
    events = [("k", 1.7e15 + 0.25 * i, 1) for i in range(6) for _ in range(2)]
    one_kernel = counts(window, events, 1)
    assert one_kernel[1] == 0
    assert counts(window, events, 2) == one_kernel
    assert counts(window, events, 3) == one_kernel


def test_a_time_whose_slice_floats_cannot_hold_fails_as_on_one_kernel():
    """At t = 2**53 with step 1.0, floats are 2 apart: the slice [t, t + 1)
    rounds to [t, t). The partial half's slices raised TimeTooLarge where
    one kernel put the event in windows a step apart that floats cannot
    tell apart ([t - 1, t + 1) rounds to [t - 1, t)); now both say
    TimeTooLarge (`too_coarse`)."""
    t = float(2**53)
    events = [("k", t, 1), ("k", t, 1)]
    for cores in (1, 2):
        with pytest.raises(KernelError, match=r"TimeTooLarge: timestamp 9007199254740992\.0 is too large for "
                                              r"Sliding\(2\.0, 1\.0\) windows: float seconds are 2\.0 apart"):
            counts(Sliding(2.0, 1.0), events, cores)
