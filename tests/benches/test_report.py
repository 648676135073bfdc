"""benches/_report.py's statistics (issue 19): the confidence interval of a
median that benches/metrics.py judges its overhead by, checked against a
brute-force count of its coverage."""

from __future__ import annotations

import itertools
import math

import pytest

from benches._report import median_ci
from benches.metrics import verdict


def coverage(n: int, rank: int) -> float:
    """How often [rank-th smallest, rank-th largest] of n samples holds the
    true median (0), over every way the n samples fall below or above it,
    each equally likely: counted, not computed."""
    held = 0
    for below in itertools.product((True, False), repeat=n):
        ordered = sorted(-(i + 1) if b else i + 1 for i, b in enumerate(below))
        held += ordered[rank - 1] <= 0 <= ordered[n - rank]
    return held / 2 ** n


@pytest.mark.parametrize("n", range(1, 16))
def test_the_interval_holds_the_median_95_times_in_100_and_is_the_narrowest_that_does(n):
    samples = [float(i) for i in range(n)]
    median, low, high = median_ci(samples[::-1])  # order of the samples does not matter
    assert median == samples[n // 2] if n % 2 else median == (samples[n // 2 - 1] + samples[n // 2]) / 2
    if coverage(n, 1) < 0.95:  # even the whole range misses too often: no interval claimed
        assert (low, high) == (-math.inf, math.inf)
        return
    rank = samples.index(low) + 1
    assert high == samples[n - rank]  # symmetric in ranks
    assert coverage(n, rank) >= 0.95
    if rank < (n + 1) // 2:  # one rank further in on both sides misses too often
        assert coverage(n, rank + 1) < 0.95


def test_thirty_pairs_give_the_tenth_and_the_twenty_first():
    assert median_ci(list(range(1, 31))) == (15.5, 10, 21)
    assert math.isnan(median_ci([])[0])


@pytest.mark.parametrize(("low", "high", "said"), [
    (-0.01, 0.02, "yes"), (-0.05, -0.01, "yes"),
    (0.021, 0.08, "NO"),
    (-0.01, 0.021, "not shown"), (0.0, 0.5, "not shown"),
])
def test_the_verdict_needs_the_whole_interval_on_one_side_of_two_percent(low, high, said):
    assert verdict(low, high) == said
