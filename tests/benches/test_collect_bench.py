"""benches/collect.py (issue 13, part 3): a short run checks every
collected run's count and prints each row; bad values are usage errors."""

from __future__ import annotations

import contextlib
import io

import pytest

from benches import collect


@pytest.fixture(scope="module")
def quick_run() -> str:
    """What one `--quick` run printed. Both tests below read the same run:
    its 15 runs of a flow (five ends for each of three shapes, two of them
    on forked kernels) cost ~5 s of a loaded 2-CPU machine, and a second
    run of its own (as the pickled-rows test had, of 100 records) the same
    again, the kernels' start-up being nearly all of it."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        collect.main(["--quick"])
    return printed.getvalue()


def test_short_run_prints_every_shape_and_end(quick_run):
    out = quick_run
    rows = [[cell.strip() for cell in line.split("|")[1:4]] for line in out.splitlines()
            if line.startswith("| int") or line.startswith("| (int")]
    per_shape = [("1", "drop"), ("1", "collect"), ("2", "drop"), ("2", "collect"), ("2", "collect, pickled")]
    assert [(row[1], row[2]) for row in rows] == per_shape * 2
    assert [row[0] for row in rows] == ["int"] * 5 + ["(int, str, float)"] * 5


def test_pickled_rows_leave_the_encoding_in_place(quick_run):
    # against the function itself: a run that left it swapped would have
    # swapped it for every test after it (the quick run's pickled rows ran)
    from kernel.execution._results import pack

    assert "collect, pickled" in quick_run
    assert collect._execute.pack_results is pack


@pytest.mark.parametrize("args", [["--records", "0"], ["--reps", "0"]])
def test_bad_values_are_usage_errors(usage_error, args):
    assert "--records and --reps must be positive ints" in usage_error(collect.main, args)
