"""A run with a state_dir over `sys.stdin`, given from a file, after a run
that failed over another file object of the standard input's offset
(`open(0, closefd=False)` or `os.fdopen(os.dup(0))`, closed after its run),
the file renamed meanwhile (rotated, `mv lines.txt lines.old`, or replaced
by another at its path): the note that lines were taken stood by the
file's path, which descriptor 0 no longer has, and went; the run resumed,
and committed 1,496 of 3,000 lines, no error. The note now stands by the
file's inode: refused, as without the rename."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_session41_live_stream_rewound_file import _SCRIPT

_ROOT = Path(__file__).resolve().parents[2]

_BEFORE_THE_SECOND_RUN = 'if how == "lseek":'
_RENAMED = '''os.rename(os.path.join(here, "lines.txt"), os.path.join(here, "lines.old"))
if how == "renamed and replaced":
    with open(os.path.join(here, "lines.txt"), "w") as other:
        other.write("0\\n")
'''


@pytest.mark.parametrize("how", ["renamed", "renamed and replaced"])
@pytest.mark.parametrize("first", ["a dup of descriptor 0", "open(0)"])
def test_a_run_after_one_over_another_file_object_of_a_renamed_standard_input_is_refused(
        tmp_path, how, first):
    assert _BEFORE_THE_SECOND_RUN in _SCRIPT
    script = tmp_path / "app.py"
    script.write_text(_SCRIPT.replace(_BEFORE_THE_SECOND_RUN, _RENAMED + _BEFORE_THE_SECOND_RUN))
    total = 3_000
    lines = tmp_path / "lines.txt"
    lines.write_text("".join(f"{i}\n" for i in range(total)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(_ROOT), os.environ.get("PYTHONPATH", "")]))
    with open(lines) as given:
        done = subprocess.run([sys.executable, str(script), str(tmp_path), str(Path(__file__).parent),
                               str(total), how, "given", first], stdin=given, capture_output=True,
                              text=True, cwd=_ROOT, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    told = json.loads(done.stdout.splitlines()[-1])
    assert "the first run fails here" in told["first"]
    committed = told["lines"]
    assert "an earlier run of this process read lines of its input" in told.get("second", ""), (
        f"not refused: {len(committed)} of {total} lines committed")
    assert 0 < len(committed) < total
    assert committed == list(range(len(committed)))  # (what the failed run committed, and nothing else)
