"""benches/pipelines.py's selection flags (issue 13): `--only` runs some of
the pipelines and refuses names it does not know; `--reps` sets the runs."""

from __future__ import annotations

import pytest

from benches import pipelines


def test_only_windows_prints_the_windowed_sum_rows_alone(capsys):
    pipelines.main(["--quick", "--only", "windows", "--cores", "1,2", "--reps", "1", "--no-bytewax"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "pipeline" not in line]
    assert rows and all("windowed sum" in row for row in rows)
    assert "median of 1 runs" in out
    assert [row.split("|")[3].strip() for row in rows if "kernel.run" in row] == ["1", "2"]
    # the machine's own 2-vs-1 beside them, sampled before the pipeline and after
    ceiling = [line for line in out.splitlines() if line.startswith("machine, 2 vs 1")]
    assert len(ceiling) == 1 and "median" in ceiling[0], out


@pytest.mark.parametrize("argv, says", [
    (["--only", "windows,bogus"], "--only takes some of wordcount, heavy, windows, got 'windows,bogus'"),
    (["--only", ","], "--only takes some of"),
    (["--reps", "0"], "--reps must be at least 1, got 0"),
])
def test_bad_selections_are_usage_errors(usage_error, argv, says):
    assert says in usage_error(pipelines.main, argv)
