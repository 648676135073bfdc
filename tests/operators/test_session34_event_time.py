"""Session 34's review of event time: the cost of a hot key in an interval
join and in session windows, exact against a brute-force reference."""

from __future__ import annotations

import time
from collections import Counter

from kernel import Dataflow, run

# A hot key: one value every 10 ms, so a ttl of 50 s holds ~5,000 of its
# values at any time. CPU time of the run, one kernel in this process: ~0.2 s.
HOT_EVENTS, SPACING = 30_000, 0.01
CPU_LIMIT = 3.0


def test_an_interval_join_on_a_hot_key_expires_its_values_in_linear_time():
    # Each expiring value read its key's whole list of values: with 5,000
    # held, 30,000 values on the left and a few on the right took ~10 s of CPU.
    ttl = 50.0
    left = [("hot", i * SPACING, f"l{i}") for i in range(HOT_EVENTS)]
    right = [("hot", t, f"r{t}") for t in (0.0, 100.0, 250.005, 299.99)]
    flow = Dataflow("hot-interval-join")
    lhs = flow.from_iterable(left, timestamp=lambda e: e[1]).key_by(lambda e: e[0]).map_values(lambda e: e[2])
    rhs = flow.from_iterable(right, timestamp=lambda e: e[1], max_delay=300.0).key_by(
        lambda e: e[0]).map_values(lambda e: e[2])
    pairs = lhs.join(rhs, ttl=ttl)
    out = pairs.collect()
    started = time.process_time()
    run(flow)
    spent = time.process_time() - started
    expected = Counter((kl, (vl, vr)) for kl, tl, vl in left for kr, tr, vr in right
                       if kl == kr and abs(tl - tr) <= ttl)
    assert Counter(out.items) == expected
    assert pairs.late_count.value == 0
    assert spent < CPU_LIMIT, f"{spent:.1f} s of CPU"
