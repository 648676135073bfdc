"""Session 43 review: `kernel.run` looks `run` and `main` up when asked for
(a module-level __getattr__), and a user's type checker lost them: mypy
took `from kernel.run import run` for Any (its arguments went unchecked),
and any name at all (`from kernel.run import rnu`) for one that exists.
`from kernel.run import *` gave neither function. The names are declared
for type checkers now, and listed in `__all__` and `dir()`.

And the command line's checks before the imports: a pipeline path the
system cannot even look up (a name longer than NAME_MAX) ended
`python -m kernel.run` with Python's traceback (OSError, exit 1), not as a
usage error (before the change too)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from tests.test_typing import ERROR, installed_layout, mypy

USER = """\
from kernel import Dataflow
from kernel.run import main, rnu
from kernel.run import run
import kernel.run as module

flow = Dataflow("typed")
run(flow, cores="2")
module.run(3)
code: int = main(["p.py"])
"""


def test_a_type_checker_sees_the_function_and_the_command_line(tmp_path):
    (tmp_path / "user.py").write_text(USER)
    lines, _ = mypy(installed_layout(tmp_path), tmp_path / "mypy_cache", tmp_path / "user.py")
    said = {(int(m["line"]), m["message"].split('"')[1]) for m in map(ERROR.match, lines) if m}
    # the misspelled name; run's `cores`, given a str; run's flow, given an int
    assert said == {(2, "kernel.run"), (7, "cores"), (8, "run")}, lines


def test_a_star_import_and_dir_give_both_names():
    code = textwrap.dedent("""\
        import kernel._facade, kernel.cli._run
        import kernel.run
        assert {"run", "main"} <= set(dir(kernel.run)), dir(kernel.run)
        from kernel.run import *
        assert run is kernel._facade.run and main is kernel.cli._run.main
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_pipeline_name_too_long_to_look_up_is_a_usage_error(tmp_path):
    name = "p" * 300 + ".py"  # (NAME_MAX is 255 on Linux: stat says ENAMETOOLONG)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNEL_")}
    done = subprocess.run([sys.executable, "-m", "kernel.run", name], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: cannot read the pipeline file {name}: File name too long\n"
