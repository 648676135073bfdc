"""Session 34: `submit` of a file that is not NAME.py, or of a directory,
is a usage error found before anything is sent (exit 2, as `kernel run`
says it). A `pipeline.txt` was sent, and refused by the coordinator, exit
1, as `submit: a pipeline file name (NAME.py) and its text are needed`
(with no coordinator: `could not reach`); a directory was `pipeline file
not found`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _system import free_port


@pytest.mark.parametrize(("name", "said"), [
    ("pipeline.txt", "cannot import pipeline.txt: not a Python file (NAME.py)"),
    ("pipeline", "cannot import pipeline: not a Python file (NAME.py)"),
    ("folder.py", "folder.py is a directory: give the pipeline file (a .py file) in it"),
])
def test_submit_refuses_what_is_not_a_python_file_before_sending_it(tmp_path, name, said):
    if name.endswith(".py"):
        (tmp_path / name).mkdir()
    else:
        (tmp_path / name).write_text("from kernel import Dataflow\nflow = Dataflow('x')\n")
    # (nobody listens there: the command must not get as far as dialling)
    env = dict(os.environ, KERNEL_SECRET="s", KERNEL_COORDINATOR=f"127.0.0.1:{free_port()}")
    done = subprocess.run([sys.executable, "-m", "kernel", "submit", name], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, f"error: {said}\n")
