"""benches/faucet.py (issue 20): its --quick run checks every run's leaves
and shows the bounded runs' memory beside the unbounded ones'; bad values
are usage errors."""

from __future__ import annotations

import pytest

from benches import faucet


def test_quick_run_bounds_what_waits_and_checks_the_leaves(capsys):
    faucet.main(["--quick", "--records", "600", "--max-in-flight", "20"])
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines() if line.startswith("| 1") or
            line.startswith("| 2")]
    waiting = {(row[1].strip(), row[2].strip()): int(row[3].strip().replace(",", "")) for row in rows}
    assert waiting[("1", "none")] == waiting[("2", "none")] == 600
    for cores in ("1", "2"):  # N - 1 and a batch of 64 (tests/operators/test_faucet.py)
        assert waiting[(cores, "max_in_flight=20")] <= 20 - 1 + 64
        assert waiting[(cores, "max_in_flight=20, watermark behind")] <= 20 - 1 + 64


@pytest.mark.parametrize("args, message", [
    (["--records", "0"], "--records must be a positive int"),
    (["--max-in-flight", "0"], "--max-in-flight must be a positive int"),
])
def test_bad_values_are_usage_errors(usage_error, args, message):
    assert message in usage_error(faucet.main, args)
