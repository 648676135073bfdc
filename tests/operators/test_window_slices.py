"""A sliding window's combiner, by slices: on several kernels the partial
half of a windowed count, sum or reduce over `Sliding(m * step, step)`
(m >= 2) keeps one accumulator per key and slice `[p * step, (p + 1) *
step)`, and sends `(key, p + 0.5, acc)`; the owner merges it into each of
the m windows the slice lies in (`operators/windows/_panes.py`). The
results on 1, 2 and 3 kernels against brute force, with late events, are
`test_window_combiner.py`'s (its windows include such sliding windows);
here, what the two halves send and merge, checked against plain loops."""

from __future__ import annotations

import math
from collections import Counter

import kernel.operators.windows._pass_on as pass_on
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel import KernelError, TimedBatch
from operators import (
    CountAggregation,
    ReduceAggregation,
    Sliding,
    SumAggregation,
    Window,
    WindowAggregate,
    WindowMerge,
)


def partial_half(window, aggregation=None):
    """A combiner's partial half that always pre-aggregates; what it emits."""
    op = WindowAggregate(window, aggregation or SumAggregation(), flat=True)
    op.open(None)
    op._pass_on = None  # (never passes its events on)
    out: list = []
    op.emit = out.extend
    return op, out


def owner(window, aggregation=None, combine=lambda a, b: a + b):
    op = WindowMerge(window, aggregation or SumAggregation(), combine)
    op.open(None)
    out: list = []
    op.emit = out.extend
    return op, out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 79), st.integers(1, 9)), max_size=80),
       st.sampled_from([(2.0, 0.5), (1.5, 0.5), (10.0, 2.0), (0.5, 0.25)]))
def test_the_partial_half_sends_one_partial_a_key_and_slice(events, size_step):
    """Events in time order (no lateness): the partials are each key's sum
    over each slice, numbered p + 0.5, and nothing else."""
    size, step = size_step
    op, out = partial_half(Sliding(size, step))
    events = sorted(events, key=lambda e: e[1])
    stamps = [t / 8 for _, t, _ in events]
    for at in range(0, len(events), 7):
        op.on_batch(0, TimedBatch([(k, v) for k, _, v in events[at:at + 7]], stamps[at:at + 7]))
    op.on_watermark(math.inf)
    expected: Counter = Counter()
    for (key, _, value), t in zip(events, stamps):
        expected[(key, math.floor(t / step) + 0.5)] += value
    assert all(type(j) is float for _, j, _ in out)
    assert Counter({(key, j): acc for key, j, acc in out}) == expected
    assert len(out) == len(expected)  # one partial a key and slice


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 79), st.integers(1, 9)), max_size=80),
       st.sampled_from([(2.0, 0.5), (1.5, 0.5), (10.0, 2.0)]))
def test_the_owner_merges_a_slice_into_each_of_its_windows(events, size_step):
    """Both halves together give each window's sum (brute force over the
    windows an event is in)."""
    size, step = size_step
    window = Sliding(size, step)
    half, partials = partial_half(window)
    merge, results = owner(window)
    events = sorted(events, key=lambda e: e[1])
    stamps = [t / 8 for _, t, _ in events]
    half.on_batch(0, TimedBatch([(k, v) for k, _, v in events], stamps))
    half.on_watermark(math.inf)
    merge.on_batch(0, partials)
    merge.on_watermark(math.inf)
    expected: Counter = Counter()
    span = round(size / step)
    for (key, _, value), t in zip(events, stamps):
        last = math.floor(t / step)
        for j in range(last - span + 1, last + 1):
            expected[(key, Window(j * step, (j + span) * step))] += value
    assert Counter({(key, w): total for key, w, total in results}) == expected
    assert merge.late == 0


def test_an_event_whose_slice_ended_here_goes_into_its_open_windows_only():
    """Sliding(2, 1): t = 0.5 is in windows [-1, 1) and [0, 2). Once this
    kernel's watermark is 1.0, its slice [0, 1) and window [-1, 1) have
    ended here: the event counts in [0, 2) alone, sent as that window's
    partial (an int number), as without slices; at 2.0 it is late."""
    op, out = partial_half(Sliding(2.0, 1.0))
    op.on_watermark(1.0)
    op.on_batch(0, TimedBatch([("k", 1), ("k", 2)], [0.5, 1.5]))  # 1.5: slice [1, 2), on time
    op.on_watermark(2.0)
    op.on_batch(0, TimedBatch([("k", 4)], [0.5]))  # every window of 0.5 ended here
    op.on_watermark(math.inf)
    assert sorted(out, key=str) == sorted([("k", 0, 1), ("k", 1.5, 2)], key=str)
    assert type(out[[r[1] for r in out].index(0)][1]) is int
    assert op.late == 1


def test_the_owner_drops_a_slice_only_where_all_its_windows_were_emitted():
    """Sliding(2, 1), slice 1 (p + 0.5 = 1.5) lies in windows 0 and 1,
    [0, 2) and [1, 3). With the owner's frontier at 2.0, window 0 was
    emitted: the slice goes into window 1 alone. At 3.0 it goes nowhere:
    dropped, counted late once."""
    merge, results = owner(Sliding(2.0, 1.0))
    merge.on_watermark(2.0)
    merge.on_batch(0, [("k", 1.5, 7)])
    merge.on_watermark(3.0)
    assert results == [("k", Window(1.0, 3.0), 7)]
    merge.on_batch(0, [("k", 1.5, 5)])
    merge.on_watermark(math.inf)
    assert merge.late == 1 and len(results) == 1


def test_window_partials_and_slice_partials_in_one_batch():
    """A batch may hold both (a slice's and, for an event behind it, a
    window's): 3 == 3.0, so each must be told by its type, not its value."""
    merge, results = owner(Sliding(2.0, 1.0))
    merge.on_batch(0, [("k", 3, 1), ("k", 3.5, 10), ("k", 3, 100), ("k", 2.5, 1000)])
    merge.on_watermark(math.inf)
    by_window = {w.start: total for _, w, total in results}
    assert by_window == {2.0: 10 + 1000, 3.0: 1 + 10 + 100, 1.0: 1000}


def test_a_failing_combine_names_the_window_a_slice_was_merged_into():
    def refuse(a, b):
        raise ValueError("no")

    merge, _ = owner(Sliding(2.0, 1.0), ReduceAggregation(refuse), refuse)
    merge.on_batch(0, [("k", 3.5, 1)])
    # (slice 3 lies in windows 2 and 3: the first is merged into first)
    with pytest.raises(KernelError, match=r"(?s)record: \('k', 2\).*partial reduce of window "
                                          r"Window\(2\.0, 4\.0\)"):
        merge.on_batch(0, [("k", 3.5, 2)])


def test_a_time_too_large_names_the_users_sliding_window():
    op, _ = partial_half(Sliding(2.0, 1.0), CountAggregation())
    with pytest.raises(KernelError, match=r"too large for Sliding\(2\.0, 1\.0\) windows"):
        op.on_batch(0, TimedBatch([("k", 1)], [1.7e18]))


def test_a_sliding_window_not_of_whole_steps_keeps_window_partials():
    """Sliding(0.75, 0.5): a slice would not lie wholly in its windows."""
    op, out = partial_half(Sliding(0.75, 0.5))
    op.on_batch(0, TimedBatch([("k", 1)], [0.6]))
    op.on_watermark(math.inf)
    assert sorted(out) == [("k", 0, 1), ("k", 1, 1)]


def test_slices_pre_aggregate_where_windows_would_pass_on():
    """Each second a new set of 341 keys, ~3 events each: a window of 5
    seconds holds ~1,700 keys of its ~5,100 events, and each event is in 5
    windows, so window partials (~1.7 an event) would not pay and the half
    passed its events on; a slice's partials are ~0.33 an event."""
    op = WindowAggregate(Sliding(5.0, 1.0), SumAggregation(), flat=True)
    op.open(None)
    op.emit = lambda batch: None
    for i in range(20):
        batch = TimedBatch([(f"k{i}-{n % 341}", 1) for n in range(1024)], [i + n / 1024 for n in range(1024)])
        op.on_batch(0, batch)
        op.on_watermark(i + 1.0)
    assert op._pass_on.passing is False
    assert pass_on._PASS_ON_ABOVE == 0.5  # (the knob this relies on, as the module sets it)


@pytest.mark.parametrize("window, sent", [
    (Sliding(2.0, 1.0), [("j", 7.5, 2), ("k", 0.5, 1)]),  # by slices
    (Sliding(0.75, 0.5), [("j", 14, 2), ("j", 15, 2), ("k", 0, 1), ("k", 1, 1)]),  # by windows (keyed state)
])
def test_nothing_is_held_in_a_snapshot(window, sent):
    """The partial half sends its slices before each epoch marker
    (`flush_partials`), as it does its windows: none is open after it (as
    the pass-on policy counts them, `open_windows`) and the snapshot holds
    none."""
    op, out = partial_half(window)
    op.on_batch(0, TimedBatch([("k", 1), ("j", 2)], [0.5, 7.5]))
    assert op._windows.open_windows() == len(sent)
    op.flush_partials()
    assert op._windows.open_windows() == 0
    assert op.on_epoch(1)["states"] == {"windows": {}}
    assert sorted(out) == sent


def test_a_reduce_slice_keeps_its_records_in_arrival_order():
    """Within a slice a reduce takes records as they come (its function
    need not be commutative there): the slice's partial of ["a"], ["b"]
    is ["a", "b"]."""
    op, out = partial_half(Sliding(2.0, 1.0), ReduceAggregation(lambda a, b: a + b))
    op.on_batch(0, TimedBatch([("k", ["a"]), ("k", ["b"])], [0.2, 0.1]))
    op.on_watermark(math.inf)
    assert out == [("k", 0.5, ["a", "b"])]



@pytest.mark.parametrize("aggregation, columns", [(SumAggregation, False), (ReduceAggregation, True)])
def test_an_event_behind_its_slice_goes_through_the_slices_once(monkeypatch, aggregation, columns):
    """The partial half hands such events to the window-by-window loop,
    which takes pairs of a running sum as columns: its own loop, not the
    partial half's, so they do not go through the slices a second time
    (review: harmless, but twice the work for each of them)."""
    from kernel.operators.windows._panes import _Slices

    calls = []
    for name in ("add", "add_columns"):
        real = getattr(_Slices, name)

        def counted(self, port, *args, _real=real, _name=name):
            calls.append(_name)
            return _real(self, port, *args)

        monkeypatch.setattr(_Slices, name, counted, raising=False)
    op, out = partial_half(Sliding(2.0, 1.0), aggregation(lambda a, b: a + b) if columns else aggregation())
    op.on_watermark(1.0)
    stamps = [0.5, 0.6]  # both behind slice [0, 1)
    if columns:  # (a window fused with its key_by and map_values)
        op._add_columns(0, ["k", "k"], [1, 2], TimedBatch([None, None], stamps))
    else:
        op.on_batch(0, TimedBatch([("k", 1), ("k", 2)], stamps))
    op.on_watermark(math.inf)
    # (a reduce's columns go on to the slices' add as pairs: one pass)
    assert calls == (["add_columns", "add"] if columns else ["add"])
    assert out == [("k", 0, 3)]
