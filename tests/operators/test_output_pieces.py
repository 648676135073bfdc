"""A watermark that closes windows with a large output hands the results on
in pieces, a piece a tick, and what follows it (the watermark going on,
later batches and watermarks, epoch markers, the end of input) waits behind
the last piece; so do a keyed aggregate's results at the end of input, the
step's end behind them, and a join's pairs for a hot key, the batch's
later records behind them: exact output, in order, against a plain loop, with
small pieces patched in so that a few records take every way through (the
window fused with its key_by and map_values, or apart behind a fan-out; a
window or an aggregate downstream of the results, which would drop them as
late, or end without them, if the watermark or the end overtook them). The
host's turns while a large output goes on are in tests/kernel/test_budget.py."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import operators._calls as calls
import operators._join as keyed_join
import operators.windows._windowing as windowing
from kernel import Dataflow, OperatorError, Source, TimedBatch, run
from operators import Session, Tumbling, WindowAggregate
from operators.windows._aggregations import SumAggregation


@pytest.fixture
def small_pieces(monkeypatch):
    """Outputs of more than 2 results go on in pieces of 2; and no record
    may reach a window (by its inbox, or straight from the key_by and
    map_values fused with it) while its pieces go on: what comes after a
    watermark waits behind its output (an epoch's snapshot there would
    hold records its source's position does not)."""
    for module in (windowing, calls, keyed_join):
        monkeypatch.setattr(module, "LARGE_OUTPUT", 2)
        monkeypatch.setattr(module, "PIECE", 2)
    monkeypatch.setattr(windowing, "SESSIONS", 2)
    pieces, add_columns = windowing.Windowing._pieces, WindowAggregate._add_columns
    on_batch = windowing.Windowing.on_batch

    def watched_pieces(self, *args):
        self.handing_on = True
        yield from pieces(self, *args)
        self.handing_on = False

    def watched(add):
        def checked(self, *args):
            assert not getattr(self, "handing_on", False), "a record reached the window between its pieces"
            return add(self, *args)
        return checked

    monkeypatch.setattr(windowing.Windowing, "_pieces", watched_pieces)
    monkeypatch.setattr(WindowAggregate, "_add_columns", watched(add_columns))
    monkeypatch.setattr(windowing.Windowing, "on_batch", watched(on_batch))


class Scripted(Source):
    """On kernel 0, each poll emits what its script says: `("batch",
    events)` (a TimedBatch of `(key, t, value)` events at their `t`) or
    `("watermark", w)`. Several batches and watermarks in one poll reach
    the window's upstream before it runs again."""

    def __init__(self, polls):
        self.polls = list(polls)

    def open(self, context):
        if context.index != 0:
            self.polls = []

    def poll(self):
        if not self.polls:
            return False
        for kind, value in self.polls.pop(0):
            if kind == "batch":
                self.emit(TimedBatch(list(value), [t for _, t, _ in value]))
            else:
                self.advance_watermark(value)
        return bool(self.polls)


def two_levels(flow, events, fan_out: bool):
    """Sums per key and 1-second window, then the sums' total per 2-second
    window (by the results' event time, each at its window's end)."""
    if fan_out:  # a second consumer: the key_by takes its input from its inbox, not chained
        events.map(lambda e: e, name="other").collect()
    sums = events.key_by(lambda e: e[0]).map_values(lambda e: e[2]).window(Tumbling(1.0)).sum()
    totals = (sums.map(lambda r: ("all", r[2])).key_by(lambda r: r[0]).map_values(lambda r: r[1])
                  .window(Tumbling(2.0)).sum())
    return sums, sums.collect(), totals, totals.collect()


def expected(seconds: list[list[tuple]]):
    """The plain loop: each second's sums per key, keys in the order they
    first came in that second, seconds in order; the totals per 2 s."""
    sums, totals = [], defaultdict(int)
    for second, events in enumerate(seconds):
        per_key: dict = {}
        for key, _, value in events:
            per_key[key] = per_key.get(key, 0) + value
            totals[second // 2 * 2] += value
        sums += [(key, float(second), total) for key, total in per_key.items()]
    return sums, {("all", float(start)): total for start, total in totals.items()}


def script(seconds: list[list[tuple]], cuts: list[int], per_poll: list[int]) -> list:
    """Each second's events in batches (cut where `cuts` says), then the
    watermark at its end; the steps dealt into polls of `per_poll` steps."""
    steps = []
    for second, events in enumerate(seconds):
        cut = cuts[second] % (len(events) + 1)
        steps += [("batch", part) for part in (events[:cut], events[cut:]) if part]
        steps.append(("watermark", float(second + 1)))
    polls, at = [], 0
    for n in per_poll:
        if at >= len(steps):
            break
        polls.append(steps[at:at + n])
        at += n
    if at < len(steps):
        polls.append(steps[at:])
    return polls


events_of_a_second = st.lists(st.tuples(st.integers(0, 9), st.integers(1, 5)), max_size=12)


# (the patch is the same for every example)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seconds=st.lists(events_of_a_second, min_size=1, max_size=6),
       cuts=st.lists(st.integers(0, 12), min_size=6, max_size=6),
       per_poll=st.lists(st.integers(1, 8), max_size=12), fan_out=st.booleans())
def test_results_in_pieces_keep_their_order_and_the_watermark_comes_after_them(
        small_pieces, seconds, cuts, per_poll, fan_out):
    timed = [[(key, second + (i + 0.5) / 20, value) for i, (key, value) in enumerate(events)]
             for second, events in enumerate(seconds)]
    flow = Dataflow("pieces")
    events = flow.source(lambda: Scripted(script(timed, cuts, per_poll)), name="scripted")
    sums, first, totals, second = two_levels(flow, events, fan_out)
    run(flow)
    want_sums, want_totals = expected(timed)
    assert [(key, window.start, total) for key, window, total in first.items] == want_sums
    assert {(key, window.start): total for key, window, total in second.items} == want_totals
    assert sums.late_count.value == 0 and totals.late_count.value == 0


def test_on_two_kernels_the_owners_results_in_pieces_are_those_of_a_plain_loop(small_pieces):
    """On two kernels the window's owner half (after the exchange, never
    fused) hands its results on in pieces too."""
    timed = [[(key, second + (i + 0.5) / 100, key % 3 + 1) for i, key in enumerate(range(second, 40))]
             for second in range(5)]
    flow = Dataflow("pieces")
    events = flow.source(lambda: Scripted(script(timed, [7] * 5, [3] * 10)), name="scripted")
    sums, first, totals, second = two_levels(flow, events, fan_out=False)
    run(flow, cores=2)
    want_sums, want_totals = expected(timed)
    assert sorted((key, window.start, total) for key, window, total in first.items) == sorted(want_sums)
    assert {(key, window.start): total for key, window, total in second.items} == want_totals
    assert sums.late_count.value == 0 and totals.late_count.value == 0


def test_every_epochs_snapshot_is_taken_with_no_piece_still_to_go(small_pieces, monkeypatch, tmp_path):
    """Epochs every millisecond while outputs go on in pieces: no window's
    snapshot is taken between a watermark's first piece and its last (its
    closed windows are out of its state by then, and would be lost on a
    resume from it), and the results are the plain loop's."""
    taken = []
    on_epoch = windowing.Windowing.on_epoch

    def checked(self, epoch):
        taken.append(len(self._out) + self._closed_count)
        return on_epoch(self, epoch)

    monkeypatch.setattr(windowing.Windowing, "on_epoch", checked)
    timed = [[(key, second + (i + 0.5) / 400, 1) for i, key in enumerate(range(200))] for second in range(6)]
    flow = Dataflow("pieces")
    events = flow.source(lambda: Scripted(script(timed, [50] * 6, [1] * 30)), name="scripted")
    _, first, _, second = two_levels(flow, events, fan_out=False)
    run(flow, state_dir=tmp_path, epoch_interval=0.001)
    want_sums, want_totals = expected(timed)
    assert [(key, window.start, total) for key, window, total in first.items] == want_sums
    assert {(key, window.start): total for key, window, total in second.items} == want_totals
    assert taken and set(taken) == {0}


class Failing(SumAggregation):
    """A sum whose result fails for key 7 (a user's aggregation)."""

    function = "failing_result"

    def result(self, acc):
        if acc == 70:
            raise ValueError("no 70s")
        return acc


def test_a_result_failing_in_a_later_piece_names_the_step_and_function(small_pieces):
    flow = Dataflow("pieces")
    keyed = flow.from_iterable([(key, 0.5) for key in range(12)], timestamp=lambda r: r[1]).key_by(
        lambda r: r[0]).map_values(lambda r: r[0] * 10)
    keyed.apply(lambda: WindowAggregate(Tumbling(1.0), Failing()), name="sums").collect()
    with pytest.raises(OperatorError) as failure:
        run(flow)
    assert "'sums" in str(failure.value) and "failing_result" in str(failure.value)
    assert "no 70s" in str(failure.value)


def test_a_sessions_function_failing_in_a_later_piece_names_the_step_and_record(small_pieces):
    """A fold keeps a session's values and folds them when it closes: here,
    as the pieces go on, after the first sessions' results went out."""
    def add(total, value):
        if value == 70:
            raise ValueError("no 70s")
        return total + value

    flow = Dataflow("pieces")
    (flow.from_iterable([(key, 0.5) for key in range(12)], timestamp=lambda r: r[1])
         .key_by(lambda r: r[0]).map_values(lambda r: r[0] * 10)
         .window(Session(3.0)).fold(0, add, name="folds").collect())
    with pytest.raises(OperatorError) as failure:
        run(flow)
    message = str(failure.value)
    assert "'folds" in message and "add" in message and "no 70s" in message and "(7, 70)" in message, message


def totals_after(results):
    """The sum of the results' values (`(key, window, value)`) downstream,
    by one key: it ends, and emits, after the last of them came."""
    keyed = results.map(lambda r: ("all", r[2])).key_by(lambda r: r[0])
    return keyed.map_values(lambda r: r[1]).sum().collect()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(st.tuples(st.integers(0, 8), st.integers(0, 40), st.integers(1, 5)), max_size=40))
def test_sessions_closed_as_their_results_go_on_are_those_of_a_plain_loop(small_pieces, events):
    """Sessions that a watermark closes many at a time are closed a piece's
    worth at a time as their results go on (`fire`'s limit)."""
    ordered = sorted(events, key=lambda e: e[1])
    flow = Dataflow("sessions")
    sums = (flow.from_iterable(ordered, timestamp=lambda e: float(e[1])).key_by(lambda e: e[0])
                .map_values(lambda e: e[2]).window(Session(3.0)).sum())
    out, total = sums.collect(), totals_after(sums)
    run(flow)
    want = []
    for key in {key for key, _, _ in events}:
        times = [(t, value) for k, t, value in ordered if k == key]
        start, last, acc = times[0][0], times[0][0], 0
        for t, value in times:
            if t >= last + 3:  # a gap of 3 or more: a new session
                want.append((key, float(start), float(last + 3), acc))
                start, acc = t, 0
            last, acc = t, acc + value
        want.append((key, float(start), float(last + 3), acc))
    assert sorted((key, w.start, w.end, v) for key, w, v in out.items) == sorted(want)
    assert total.items == ([("all", sum(value for _, _, value in events))] if events else [])
    assert sums.late_count.value == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lefts=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9)), max_size=15),
       rights=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 9)), max_size=15))
def test_a_windowed_joins_pairs_go_on_in_pieces_and_are_every_pair(small_pieces, lefts, rights):
    """A hot key's pairs (its lefts times its rights) are made as they go
    on, not all at once."""
    flow = Dataflow("join")
    left = flow.from_iterable(sorted(lefts, key=lambda e: e[1]), timestamp=lambda e: float(e[1]))
    right = flow.from_iterable(sorted(rights, key=lambda e: e[1]), timestamp=lambda e: float(e[1]))
    joined = left.key_by(lambda e: e[0]).join(right.key_by(lambda e: e[0]), Tumbling(5.0))
    out = joined.collect()
    count = totals_after(joined.map(lambda r: (r[0], r[1], 1)))
    run(flow)
    want = Counter((lk, lt // 5 * 5.0, (lk, lt), (rk, rt))
                   for lk, lt in lefts for rk, rt in rights if lk == rk and lt // 5 == rt // 5)
    assert Counter((key, w.start, pair[0], pair[1]) for key, w, pair in out.items) == want
    assert count.items == ([("all", sum(want.values()))] if want else [])


# -- keyed aggregates at the end of input ----------------------------------------------------------


@pytest.mark.parametrize("cores", [1, 2])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.integers(0, 30), max_size=60))
def test_an_aggregates_final_results_in_pieces_all_come_before_its_end(small_pieces, cores, keys):
    """The counts per key go on in pieces at the end of input, and the
    step ends after the last: a sum of the counts after it (its own end
    emits) sees every one of them."""
    flow = Dataflow("ending")
    counts = flow.from_iterable(keys).key_by(lambda k: k).count()
    per_key = counts.collect()
    total = counts.map(lambda kv: ("all", kv[1])).key_by(lambda kv: kv[0]).map_values(
        lambda kv: kv[1]).sum().collect()
    run(flow, cores=cores)
    assert sorted(per_key.items) == sorted(Counter(keys).items())
    assert total.items == ([("all", len(keys))] if keys else [])


# -- an incremental join's hot keys ------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [None, 3.0])
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lefts=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 9)), max_size=20),
       rights=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 9)), max_size=20))
def test_a_joins_pairs_for_hot_keys_go_on_in_pieces_and_are_every_pair(small_pieces, ttl, lefts, rights):
    """A value meeting many on the other side makes its pairs a piece at a
    time, the batch's later values after them: every pair once (within
    `ttl`), and a count after the join ends only after the last."""
    flow = Dataflow("join")
    left = flow.from_iterable(sorted(lefts, key=lambda e: e[1]), timestamp=lambda e: float(e[1]))
    right = flow.from_iterable(sorted(rights, key=lambda e: e[1]), timestamp=lambda e: float(e[1]))
    joined = left.key_by(lambda e: e[0]).join(right.key_by(lambda e: e[0]), ttl=ttl)
    out = joined.collect()
    count = totals_after(joined.map(lambda r: (r[0], None, 1)))
    run(flow)
    want = Counter((lk, (lk, lt), (rk, rt)) for lk, lt in lefts for rk, rt in rights
                   if lk == rk and (ttl is None or abs(lt - rt) <= ttl))
    # (each side comes in time order: no value is late, none expires before its partners come)
    assert Counter((key, pair[0], pair[1]) for key, pair in out.items) == want
    assert count.items == ([("all", sum(want.values()))] if want else [])


# -- an aggregate's results for each round of a loop -----------------------------------------------


def _next(value: int) -> int:
    return value // 2 if value % 2 == 0 else 3 * value + 1


@pytest.mark.parametrize("cores", [1, 2])
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(starts=st.lists(st.integers(2, 60), max_size=25))
def test_a_loops_per_round_counts_in_pieces_are_each_rounds_own(small_pieces, cores, starts):
    """Inside a loop a count hands on each round's counts when the round
    is complete (`on_round`), in pieces here: the round is done, and the
    next one starts, only after the last (its state is read as the pieces
    go, then cleared: a round's records counted in the one before, or
    lost, would show)."""
    flow = Dataflow("rounds")

    def body(values):
        counts = values.key_by(lambda v: v % 7).count()
        return values.map(_next).filter(lambda v: v != 1), counts

    out = flow.from_iterable(starts).iterate(body).collect()
    run(flow, cores=cores)
    want, values = Counter(), list(starts)
    while values:
        want.update(Counter(v % 7 for v in values).items())
        values = [_next(v) for v in values if _next(v) != 1]
    assert Counter(out.items) == want
