"""benches/large_outputs.py: every case's results are its plain loop's (at
a size where the outputs still go on in pieces), a wrong one is caught,
and the table comes out."""

from __future__ import annotations

import pytest

from benches import large_outputs


def test_every_case_gives_the_plain_loops_results_in_pieces(capsys):
    large_outputs.main(["--size", "9000", "--reps", "1"])  # past 4,096: in pieces
    out = capsys.readouterr().out
    assert "host's longest wait" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "9,000" in line]
    assert len(rows) == len(large_outputs.CASES)


def test_a_result_not_the_plain_loops_is_caught():
    with pytest.raises(AssertionError, match="not the plain loop's results"):
        large_outputs.results_checked("keyed count: N keys", [(0, 2)], [(0, 1)])


def test_bad_values_are_usage_errors(usage_error):
    assert "must be positive" in usage_error(large_outputs.main, ["--reps", "0"])
