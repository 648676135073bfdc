"""`python -m kernel.run --log-format json`: every line on stderr is one
JSON object with time, level and message, and kernel, step and job where
they are known; the command's own error too."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

STALLING = """\
import logging
import time
from kernel import Dataflow

logging.getLogger("mine").warning("from the pipeline")

def slow(n):
    if n == 0:
        time.sleep(0.06)  # one stall (25 ms threshold) of the activation it runs in: the source's
    return n

flow = Dataflow("stalling")
flow.from_iterable(range(100), batch_size=10).map(slow, name="slow").collect()
"""

FAILING = """\
from kernel import Dataflow

def boom(n):
    raise ValueError(f"no {n}")

flow = Dataflow("failing")
flow.from_iterable(range(3)).map(boom, name="boom").collect()
"""


def _cli(tmp_path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "pipeline.py"
    path.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, "-m", "kernel.run", str(path), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def _objects(stderr: str) -> list[dict]:
    lines = stderr.splitlines()
    objects = [json.loads(line) for line in lines]  # every line, or this raises
    for obj in objects:
        assert datetime.datetime.fromisoformat(obj["time"]).tzinfo is not None
        assert obj["level"] in {"WARNING", "ERROR", "CRITICAL"} and obj["message"]
    return objects


def test_warnings_are_json_lines_with_kernel_step_and_job(tmp_path):
    proc = _cli(tmp_path, STALLING, "--cores", "2", "--log-format", "json")
    assert proc.returncode == 0, proc.stderr
    objects = _objects(proc.stderr)
    # the stall of record 0's sleep: kernel 0's source (reported once); on a loaded machine
    # another activation may be preempted past the threshold too, and reported as well
    stalls = [o for o in objects if o["message"].startswith("stall: ")]
    [stall] = [o for o in stalls if o.get("kernel") == 0 and o.get("step") == "from_iterable (step 0)"]
    assert stall["job"] == "stalling"
    assert stall["logger"] == "kernel" and not stall["message"].startswith("[kernel")
    mine = [o for o in objects if o["logger"] == "mine"]
    # imported by each of the two kernel processes; no kernel there: the pipeline's job
    assert [o["message"] for o in mine] == ["from the pipeline"] * 2
    assert all(o["job"] == "pipeline.py:flow" and "kernel" not in o for o in mine)


def test_the_commands_error_is_a_json_line_with_the_traceback(tmp_path):
    proc = _cli(tmp_path, FAILING, "--log-format", "json")
    assert proc.returncode == 1
    *_, error = _objects(proc.stderr)
    assert error["level"] == "ERROR" and "no 0" in error["message"] and "boom" in error["message"]
    assert 'raise ValueError(f"no {n}")' in error["traceback"]


def test_text_stays_the_default(tmp_path):
    proc = _cli(tmp_path, STALLING)
    assert proc.returncode == 0
    assert ("[kernel 0] stall: from_iterable (step 0), with slow (step 1) and collect (step 2) chained in "
            "its activation, ran" in proc.stderr and "{" not in proc.stderr)


def test_a_bad_format_is_a_usage_error(tmp_path):
    proc = _cli(tmp_path, STALLING, "--log-format", "xml")
    assert proc.returncode == 2 and "invalid choice: 'xml'" in proc.stderr
