"""The suite collects the same under `.venv/bin/pytest` as under the
README's `python -m pytest`. The console script's sys.path lacks the working
directory, and `import kernel` then found the test folder tests/kernel (a
namespace package) before the editable install's finder was asked: 220 files
failed to collect, test_session34_server.py among them (pyproject's
`pythonpath`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the file first seen failing, and one of each test folder named like a package of the
# library (kernel, net, state, operators), importing it (the whole suite: ~5 s a collection)
FILES = ["tests/metrics/test_session34_server.py", "tests/kernel/test_budget.py",
         "tests/net/test_exchange.py",
         "tests/state/test_durability_review.py", "tests/operators/test_accessors.py"]


def _collected(*python_flags: str) -> list[str]:
    # -P: nothing put before sys.path, as the console script (its sys.path[0] is .venv/bin)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, *python_flags, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
         "-o", "addopts=", "-q", "--collect-only", *FILES],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_the_console_script_collects_what_python_m_pytest_collects():
    as_script = _collected("-P")
    as_module = _collected()
    assert as_script == as_module
    assert {node.split("::")[0] for node in as_script} == set(FILES)
