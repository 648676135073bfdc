"""Review of outputs handed on in pieces (tests/operators/test_output_pieces.py):
cases those tests left out."""

from __future__ import annotations

from collections import Counter

import pytest
from test_output_pieces import small_pieces  # noqa: F401  (the fixture, for usefixtures)

import operators.windows._windowing as windowing
from kernel import Dataflow, Operator, run
from operators import Session, Sliding, Tumbling
from operators.windows._join import WindowJoin

# outputs of more than 2 results go on in pieces of 2 (test_output_pieces.py)
pytestmark = pytest.mark.usefixtures("small_pieces")


@pytest.mark.parametrize("window", [Tumbling(10.0), Sliding(10.0, 5.0), Session(5.0)], ids=repr)
def test_a_hot_keys_pairs_are_made_as_they_go_on_in_a_session_join_too(monkeypatch, window):
    """One key with 6 lefts and 6 rights in one window (or session): its 36
    pairs go on in pieces of 2, and are made as they go on, not all at
    once when the window closes (a session join's hot key made a million
    pairs in one activation, ~0.5 s, while a tumbling join's were made a
    piece at a time)."""
    made = [0]
    results, results_of = WindowJoin._results, WindowJoin._results_of

    def counting(pairs):
        for pair in pairs:
            made[0] += 1
            yield pair

    monkeypatch.setattr(WindowJoin, "_results", lambda self, *args: counting(results(self, *args)))
    monkeypatch.setattr(WindowJoin, "_results_of", lambda self, *args: counting(results_of(self, *args)))
    seen = []

    class Seen(Operator):  # (chained after the join: called as each piece goes on)
        def on_batch(self, port, batch):
            seen.append((len(batch), made[0]))
            self.emit(batch)

    flow = Dataflow("join")
    left = flow.from_iterable([("hot", 6.0 + i / 10, i) for i in range(6)], timestamp=lambda e: e[1])
    right = flow.from_iterable([("hot", 6.0 + i / 10, -i) for i in range(6)], timestamp=lambda e: e[1])
    joined = left.key_by(lambda e: e[0]).join(right.key_by(lambda e: e[0]), window)
    out = joined.apply(Seen, name="seen").collect()
    run(flow)
    windows = 2 if isinstance(window, Sliding) else 1
    assert Counter((lt[2], rt[2]) for _, _, (lt, rt) in out.items) == Counter(
        {(i, -j): windows for i in range(6) for j in range(6)})
    # the first piece went on with at most the piece after it made
    assert seen[0][0] == 2 and seen[0][1] <= 4, seen


def test_on_two_kernels_the_combiners_partial_half_hands_its_partials_on_in_pieces_too(monkeypatch):
    """On two kernels a windowed sum is split around the exchange: each
    kernel's partial half (`WindowAggregate(flat=True)`) sends `(key, j,
    partial)` for every key of a window its watermark closes. The owner
    hands its results on in pieces; the partial half handed every partial
    on in the one on_watermark, however many keys (12 here, pieces of 2;
    100,000 keys a kernel held it ~220 ms), and made them all at once.
    Each still goes on before the watermark after it: none is late."""
    flush = windowing.Windowing._flush

    def checked(self):
        assert not (self.flat and len(self._out) > 2), f"{self.name}: {len(self._out)} partials at once"
        return flush(self)

    monkeypatch.setattr(windowing.Windowing, "_flush", checked)
    flow = Dataflow("partials")
    events = [(key, 0.1 * i) for i in range(3) for key in range(12)]
    sums = (flow.from_iterable(events, timestamp=lambda e: e[1]).key_by(lambda e: e[0])
                .map_values(lambda e: 1).window(Tumbling(1.0)).sum())
    out = sums.collect()
    run(flow, cores=2)
    assert sorted((key, total) for key, _, total in out.items) == [(key, 3) for key in range(12)]
    assert sums.late_count.value == 0
