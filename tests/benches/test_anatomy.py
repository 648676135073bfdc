"""benches/anatomy.py: each configuration's tables have the kernels they
should (1, 2, 2; or past two kernels, one summary column set), only the
kernels of one run show the exchange and the ring reader, and no step took
more CPU than its kernel had."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benches.anatomy import main

ROOT = Path(__file__).resolve().parents[2]


def _tables(output: str) -> dict[str, list[list[str]]]:
    tables: dict[str, list[list[str]]] = {}
    title = None
    for line in output.splitlines():
        if line.startswith("### "):
            title = re.search(r": (.*) \(CPU ms", line).group(1)
            tables[title] = []
        elif title and line.startswith("| ") and not line.startswith("| what ran"):
            tables[title].append([cell.strip() for cell in line.strip("|").split("|")])
    return tables


def _ms(cell: str) -> float:
    return float(cell.replace(",", "")) if cell else 0.0


@pytest.mark.parametrize("pipeline", ["q8", "windows"])
def test_each_configuration_shows_its_kernels_and_what_ran(pipeline):
    events = "20000" if pipeline == "q8" else "6000"
    command = [sys.executable, "-m", "benches.anatomy", "--pipeline", pipeline, "--events", events]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    tables = _tables(done.stdout)
    assert list(tables) == ["one kernel", "two kernels", "two independent kernels, half each"]
    for name, rows in tables.items():
        kernels = 1 if name == "one kernel" else 2
        assert all(len(row) == 1 + 2 * kernels for row in rows), name
        total, steps = rows[0], [row for row in rows[1:] if row[0].startswith("step ")]
        assert steps, f"{name}: no step was timed"
        for k in range(kernels):
            # a step runs inside another's activation where it is chained
            # (counted in both), so only each row is bounded by the total
            largest = max(_ms(row[2 + 2 * k]) for row in steps)
            assert 0 < largest <= _ms(total[2 + 2 * k]), (name, k, largest, total)
        crossing = [row[0] for row in rows if row[0] == "ring reader" or "inside: exchange" in row[0]]
        assert bool(crossing) == (name == "two kernels"), (name, crossing)


def test_more_kernels_are_summarised_against_as_many_independent_runs():
    command = [sys.executable, "-m", "benches.anatomy", "--pipeline", "q4", "--events", "12000",
               "--kernels", "3"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    tables = _tables(done.stdout)
    assert list(tables) == ["one kernel", "3 kernels", "3 independent kernels, 1/3 each"]
    for name in ("3 kernels", "3 independent kernels, 1/3 each"):
        rows = tables[name]
        assert all(len(row) == 5 for row in rows), name  # what ran, calls, median, least, most
        total = rows[0]
        median, least, most = (_ms(cell) for cell in total[2:])
        assert 0 < least <= median <= most, (name, total)
        for row in rows[1:]:
            assert _ms(row[2]) <= median and _ms(row[4]) <= most, (name, row)
        crossing = [row[0] for row in rows if row[0] == "ring reader" or "inside: exchange" in row[0]]
        assert bool(crossing) == (name == "3 kernels"), (name, crossing)
    for sent in ("send_batch", "send_watermarks"):  # q4's three edges send their watermarks together
        sends = [row for row in tables["3 kernels"] if row[0] == f"inside: transport {sent}"]
        assert sends and int(sends[0][1].replace(",", "")) > 0, sent


def test_too_few_events_is_a_usage_error(usage_error):
    assert "--events must be at least 2 (--kernels)" in usage_error(main, ["--events", "1"])
    assert "--kernels must be at least 2" in usage_error(main, ["--kernels", "1"])
