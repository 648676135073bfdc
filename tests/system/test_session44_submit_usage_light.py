"""Session 44: `submit`'s own usage errors (a missing or bad pipeline file,
`--epoch-interval` without `--state-dir`) and a coordinator's bad
`--dashboard` imported asyncio and aiohttp before they said anything
(`submit` checked its file with the client's module, the coordinator read
the address with the dashboard server's): ~0.3 s of CPU where the other
commands' usage errors cost Python's start-up (session 42's test, whose
driver this reuses)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_session42_cli_start_up import _DRIVER


@pytest.mark.parametrize(("args", "said"), [
    (["submit", "missing.py"], "error: pipeline file not found: missing.py"),
    (["submit", "pipeline.txt"], "error: cannot import pipeline.txt: not a Python file (NAME.py)"),
    (["submit", "pipeline.py", "--epoch-interval", "5"], "error: --epoch-interval needs --state-dir"),
    (["submit", "pipeline.py", "--state-dir", "s", "--epoch-interval", "nan"], "error: "),
    (["submit", "broken.py"], "error: "),
    (["coordinator", "--listen", "127.0.0.1:1", "--dashboard", "nohost"],
     "error: dashboard must be 'HOST:PORT' (e.g. '127.0.0.1:9464'), got 'nohost': no port"),
    (["coordinator", "--listen", "127.0.0.1:1", "--dashboard", "h:99999"], "the port must be a number"),
])
def test_a_submit_or_dashboard_usage_error_imports_neither_the_links_nor_the_event_loop(tmp_path, args, said):
    (tmp_path / "pipeline.py").write_text("from kernel import Dataflow\nflow = Dataflow('p')\n")
    (tmp_path / "pipeline.txt").write_text("")
    (tmp_path / "broken.py").write_text("def (:\n")
    env = dict(os.environ, KERNEL_SECRET="s", KERNEL_COORDINATOR="127.0.0.1:1")
    done = subprocess.run([sys.executable, "-c", _DRIVER, *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=tmp_path)
    *said_lines, last = done.stderr.splitlines()
    assert said in "\n".join(said_lines), done.stderr
    assert last == "imported: [] exit: 2", done.stderr
