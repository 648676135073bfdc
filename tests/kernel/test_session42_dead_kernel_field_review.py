"""`python -m kernel.run --log-format json`: a kernel process that died
(exited, killed) ends the command with a JSON error whose `kernel` field
names it, as a failed step's does (test_session42_json_error_fields.py):
it was left out, the kernel named only in the message's text, where a log
pipeline filtering on the field did not find it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# record 3 is kernel 1's with two kernels (from_iterable's shares are fixed)
DYING = """\
import os
from kernel import Dataflow

def parse(n):
    if n == 3:
        os._exit(3)
    return n

flow = Dataflow("dying")
flow.from_iterable(range(10)).map(parse).collect()
"""


def test_a_dead_kernel_is_named_by_the_kernel_field(tmp_path):
    path = tmp_path / "pipeline.py"
    path.write_text(DYING)
    command = [sys.executable, "-m", "kernel.run", str(path), "--log-format", "json", "--cores", "2"]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    *_, error = [json.loads(line) for line in proc.stderr.splitlines()]
    assert error["level"] == "ERROR" and error["logger"] == "kernel.run", error
    assert error["message"] == "kernel 1 exited with status 3 before finishing", error
    assert error["kernel"] == 1, error
