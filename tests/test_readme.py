"""The README's self-contained Python examples run and their asserts hold."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_examples_run():
    runnable = [b for b in python_blocks() if "await " not in b]
    assert len(runnable) >= 3
    namespace = {"__name__": "readme"}  # the tour reads top to bottom
    for block in runnable:
        exec(compile(block, str(README), "exec"), namespace)


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert "grep -m1" in ci and "README.md" in ci
    first_lines = README.read_text().splitlines()[:5]
    assert any(line.startswith("python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'")
               for line in first_lines)
