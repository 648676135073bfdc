"""`python -m kernel.run --log-format json`: the command's last word on a
failed step carries the step and the kernel as fields, as the stall
warnings do, not only inside the message's text (where a log pipeline
cannot filter on them)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# record 3 is kernel 1's with two kernels (from_iterable's shares are fixed), the one record that fails
FAILING = """\
from kernel import Dataflow

def parse(n):
    if n == 3:
        raise ValueError(f"bad record {n}")
    return n

flow = Dataflow("failing")
flow.from_iterable(range(10)).map(parse).collect()
"""


def _last_json_line(tmp_path, *args: str) -> dict:
    path = tmp_path / "pipeline.py"
    path.write_text(textwrap.dedent(FAILING))
    proc = subprocess.run([sys.executable, "-m", "kernel.run", str(path), "--log-format", "json", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    *_, error = [json.loads(line) for line in proc.stderr.splitlines()]
    return error


def test_one_kernel_error_names_its_step_and_kernel_as_fields(tmp_path):
    error = _last_json_line(tmp_path)
    assert error["level"] == "ERROR" and error["logger"] == "kernel.run"
    assert error["step"] == "map(parse) (step 1)"
    assert error["kernel"] == 0
    assert error["job"] == "pipeline.py:flow"
    assert error["message"].startswith("operator 'map(parse) (step 1)': function 'parse' raised ValueError")
    assert 'raise ValueError(f"bad record {n}")' in error["traceback"]


def test_the_failed_kernel_is_a_field_not_a_prefix_of_the_message(tmp_path):
    error = _last_json_line(tmp_path, "--cores", "2")
    assert error["kernel"] == 1 and error["step"] == "map(parse) (step 1)"
    # the text form's "kernel 1: " prefix is the field now, as the kernels' own records drop "[kernel 1] "
    assert error["message"].startswith("operator 'map(parse) (step 1)': function 'parse' raised ValueError")
