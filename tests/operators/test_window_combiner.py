"""A windowed count, sum or reduce on several kernels pre-aggregates per
kernel, or passes records on to the key's owner while pre-aggregating does
not pay (`WindowAggregate(flat=True)` measures which). Whichever it does,
batch by batch, the results and late counts are the same: each kernel decides
which of its events are late by its own watermark, and passes on only
batches none of whose events any window there has closed on.

The modes are forced through the module's knobs (the kernel processes are
forked, so they inherit them): always pre-aggregate, pass on from the start,
and switch back and forth every batch."""

from __future__ import annotations

import math
import os

import kernel.operators.windows._pass_on as pass_on
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_windows import (
    Scripted,
    SignalOnce,
    batch_sizes,
    by_window,
    keyed_values,
    members,
    replay_per_kernel,
    source,
    streams,
)

from kernel import Dataflow, TimedBatch, VirtualClock, run
from operators import EventTimeSource, Sliding, SumAggregation, Tumbling, Window, WindowAggregate, WindowMerge

MODES = {
    "pre-aggregate": {"_PASS_ON_ABOVE": math.inf},
    "pass on": {"_PASS_ON_ABOVE": -1.0, "_START_PASSING": True, "_PASSED_BEFORE_PROBE": 10**9,
                "_MEASURE_AT_LEAST": 0},
    "switch every batch": {"_PASS_ON_ABOVE": -1.0, "_START_PASSING": True, "_PASSED_BEFORE_PROBE": 1,
                           "_MEASURE_AT_LEAST": 0},
}
# (sliding windows of whole steps pre-aggregate by slices: `_panes.py`)
WINDOWS = [Tumbling(1.0), Tumbling(0.25), Sliding(2.0, 0.5), Sliding(1.5, 0.5), Sliding(0.75, 0.5),
           Sliding(0.5, 1.25)]


def aggregates(window, events, batch_size, max_delay, cores, mode):
    """{name: ({(key, window): result}, late count)} for count, sum and reduce(max)."""
    flow = Dataflow()
    w = keyed_values(source(flow, events, max_delay=max_delay, batch_size=batch_size)).window(window)
    results = {"count": w.count(), "sum": w.sum(), "max": w.reduce(max)}
    handles = {name: r.collect() for name, r in results.items()}
    saved = {name: getattr(pass_on, name) for name in MODES[mode]}
    try:
        for name, value in MODES[mode].items():
            setattr(pass_on, name, value)
        run(flow, cores=cores, clock=VirtualClock())  # batches as replayed (test_windows.replay)
    finally:
        for name, value in saved.items():
            setattr(pass_on, name, value)
    return {name: (by_window(handles[name].items), r.late_count.value) for name, r in results.items()}


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(WINDOWS), streams(max_size=60), batch_sizes, st.sampled_from([1, 2, 3]))
def test_every_mode_gives_the_brute_force_results(window, events, batch_size, cores):
    groups = members(window, events)
    values = {kw: [events[i][2] for i in idx] for kw, idx in groups.items()}
    for mode in MODES:
        got = aggregates(window, events, batch_size, 0.5, cores, mode)
        assert got["count"] == ({kw: len(v) for kw, v in values.items()}, 0), mode
        assert got["sum"] == ({kw: sum(v) for kw, v in values.items()}, 0), mode
        assert got["max"] == ({kw: max(v) for kw, v in values.items()}, 0), mode


def expected_aggregates(window, events, batch_size, max_delay, cores):
    """What `aggregates` must return, from the replay of each kernel's share."""
    groups, late = replay_per_kernel(window, events, max_delay, batch_size, cores)
    values = {kw: [events[i][2] for i in idx] for kw, idx in groups.items()}
    n_late = sum(late)
    return {
        "count": ({kw: len(v) for kw, v in values.items()}, n_late),
        "sum": ({kw: sum(v) for kw, v in values.items()}, n_late),
        "max": ({kw: max(v) for kw, v in values.items()}, n_late),
    }


@settings(max_examples=15, deadline=None)
@given(st.sampled_from(WINDOWS), streams(disorder=4.0, max_size=60), st.sampled_from([1, 3, 8]),
       st.sampled_from([0.0, 0.5]), st.sampled_from([2, 3]))
def test_late_events_in_every_mode_are_those_behind_their_own_kernels_watermark(
        window, events, batch_size, max_delay, cores):
    """Exact results and late counts on several kernels, in every mode,
    against a replay of each kernel's share (record i is kernel i % cores'):
    an event is late when its own kernel's watermark, after the batches
    before it, has passed every window it belongs to."""
    expected = expected_aggregates(window, events, batch_size, max_delay, cores)
    for mode in MODES:
        assert aggregates(window, events, batch_size, max_delay, cores, mode) == expected, mode
    _, late = replay_per_kernel(window, events, max_delay, batch_size, cores)
    event(f"kernels with late events: {len({i % cores for i, is_late in enumerate(late) if is_late})}")


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([Sliding(2.0, 0.5), Sliding(1.5, 0.5), Tumbling(0.25)]),
       streams(disorder=4.0, max_size=60), st.sampled_from([1, 3, 8]), st.sampled_from([0.0, 0.5]),
       st.sampled_from([2, 3]))
def test_a_single_windowed_sum_fused_with_its_key_by_and_map_values(window, events, batch_size, max_delay,
                                                                   cores):
    """One sum alone after key_by and map_values: the partial half takes the
    keys and values as columns (`add_columns`), late events and slices
    too; the same results and late counts as the replay of each kernel's
    share."""
    flow = Dataflow()
    sums = keyed_values(source(flow, events, max_delay=max_delay, batch_size=batch_size)).window(window).sum()
    out = sums.collect()
    run(flow, cores=cores, clock=VirtualClock())
    assert (by_window(out.items), sums.late_count.value) == expected_aggregates(
        window, events, batch_size, max_delay, cores)["sum"]


# Each kernel's share, in batches of one, with no delay allowed: kernel 0
# reads t = 0.5, 2.5, 0.25, 3.5, 2.75 and kernel 1 t = 5.5, 1.5, 6.5, 5.25,
# 7.5 (record i is kernel i % 2's). Behind their own kernel's watermark:
# 0.25 (after 2.5) and 2.75 (after 3.5) on kernel 0, 1.5 (after 5.5) and
# 5.25 (after 6.5) on kernel 1; 1.5 would be on time on kernel 0, 2.75 on
# kernel 1. Values are powers of two, so a sum says which events it holds.
_SHARES = ([0.5, 2.5, 0.25, 3.5, 2.75], [5.5, 1.5, 6.5, 5.25, 7.5])
_INTERLEAVED = [t for pair in zip(*_SHARES) for t in pair]
_TWO_SHARES = [("k", t, 2**i) for i, t in enumerate(_INTERLEAVED)]


@pytest.mark.parametrize("mode", MODES)
def test_each_kernel_drops_the_events_behind_its_own_watermark(mode):
    got = aggregates(Tumbling(1.0), _TWO_SHARES, 1, 0.0, 2, mode)
    late = {0.25, 2.75, 1.5, 5.25}
    sums = {("k", Window(math.floor(t), math.floor(t) + 1.0)): v for _, t, v in _TWO_SHARES if t not in late}
    assert got["sum"] == (sums, 4)
    assert got["count"][1] == got["max"][1] == 4
    assert expected_aggregates(Tumbling(1.0), _TWO_SHARES, 1, 0.0, 2) == got  # the replay agrees


@pytest.mark.parametrize("keys, passing", [(10, False), (1000, True)])
def test_the_partial_half_passes_on_only_where_partials_hardly_shrink(keys, passing):
    """10 keys: a window's ~1,000 events make ~10 partials, pre-aggregated;
    1,000 keys (the benchmark's ~1.6 events per key and window): passed on."""
    op = WindowAggregate(Tumbling(1.0), SumAggregation(), flat=True)
    op.open(None)
    op.emit = lambda batch: None
    for i in range(20):
        batch = TimedBatch([(f"k{(i * 1024 + n) % keys}", 1) for n in range(1024)],
                           [i + n / 1024 for n in range(1024)])
        op.on_batch(0, batch)
        op.on_watermark(i + 1.0)
    assert op._pass_on.passing is passing


@pytest.mark.parametrize("window", [Tumbling(1.0), Sliding(2.0, 1.0)])
def test_what_comes_for_a_window_the_owner_emitted_is_late_not_a_second_result(window):
    """A kernel whose inputs were idle lags behind the owner's frontier; what
    it sends when it wakes, partials or passed-on records, for a window the
    owner has emitted is late there (as on one kernel), never a second
    result for that window."""
    op = WindowMerge(window, SumAggregation(), lambda a, b: a + b)
    op.open(None)
    out = []
    op.emit = out.extend
    last = window.size / window.step if isinstance(window, Sliding) else 1  # windows holding t=0.5
    op.on_batch(0, [("k", 0, 5)])
    op.on_watermark(10.0)
    emitted = list(out)
    assert [total for _, _, total in emitted] == [5]
    op.on_batch(1, [("k", 0, 7), ("j", 0, 1)])  # a lagging kernel's partials for window 0
    op.on_batch(1, TimedBatch([("k", 3), ("k", 4)], [0.5, 0.6]))  # and its records
    op.on_watermark(20.0)
    assert out == emitted
    assert op.late == 2 + 2 * 1  # two partials (one each), two records
    # a window still open here takes them as before
    op.on_batch(1, [("k", 25, 2)])
    op.on_batch(1, TimedBatch([("k", 3)], [25.5]))
    op.on_watermark(40.0)
    # (the partial is window 25's; the record is in every window holding 25.5)
    assert sum(total for _, w, total in out[len(emitted):] if w.start <= 25.5 < w.end) == 2 + 3 * last


def test_window_merge_snapshot_counts_the_late_records_of_its_last_batch():
    """WindowMerge drops passed-on records for a window it already emitted
    into `_late_out` but counted them only at the next watermark: a snapshot
    taken between (the epoch marker right after that batch) left them out,
    and a run resumed from it reported fewer late events than a crash-free
    one."""
    op = WindowMerge(Tumbling(1.0), SumAggregation(), lambda a, b: a + b)
    op.open(None)
    op.emit = lambda batch: None
    op.on_batch(0, [("k", 0, 5)])
    op.on_watermark(10.0)
    op.on_batch(1, TimedBatch([("k", 3), ("k", 4)], [0.5, 0.6]))  # a lagging kernel's records
    assert op.on_epoch(1)["late"] == 2


def test_a_kernel_whose_input_goes_idle_sends_its_partials_before_saying_so():
    """Kernel 1 reads ("k", 5.2) on time, then its source goes idle. Its
    partial half kept window [5, 6)'s partial until its own watermark passed
    6, but told the owner it was idle at once: the owner emitted [5, 6) on
    kernel 0's watermark alone (count 1), and kernel 1's partial, sent at its
    end, was dropped as late. One core, and `collect()` of the same windows
    (no combiner), count both events. A partial half whose inputs all go
    idle must send what it holds (partials merge at the owner) first.
    Kernel 0 reads 5.0, then 7.0 once kernel 1 has gone idle; kernel 1 ends
    once the count's [5, 6) has come out (pipes between them, no sleeps)."""
    idle_read, idle_write = os.pipe()  # kernel 1's source went idle
    out_read, out_write = os.pipe()  # the count emitted a window
    for fd in (idle_read, out_read):
        os.set_blocking(fd, False)
    scripts = {
        0: [("emit", [("k", 5.0)]), ("wait", idle_read, 1), ("emit", [("k", 7.0)])],
        1: [("emit", [("k", 5.2)]), ("wait", out_read, 1)],
    }

    def scripted():
        return EventTimeSource(Scripted(scripts), timestamp=lambda e: e[1], idle_timeout=0.05)

    flow = Dataflow()
    stream = flow.source(scripted, name="scripted").apply(
        lambda: SignalOnce(idle_write, "idle", kernel=1), name="idle probe")
    windowed = stream.key_by(lambda e: e[0]).window(Tumbling(1.0))
    counts = windowed.count()
    counts.apply(lambda: SignalOnce(out_write, "batch"), name="output probe")
    counted = counts.collect()
    collected = windowed.collect().collect()
    try:
        run(flow, cores=2)
    finally:
        for fd in (idle_read, idle_write, out_read, out_write):
            os.close(fd)
    assert sorted((k, w.start, len(v)) for k, w, v in collected.items) == [("k", 5.0, 2), ("k", 7.0, 1)]
    assert sorted((k, w.start, n) for k, w, n in counted.items) == [("k", 5.0, 2), ("k", 7.0, 1)]
    assert counts.late_count.value == 0
