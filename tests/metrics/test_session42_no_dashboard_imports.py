"""A run without `--dashboard` imports nothing of the dashboard's server
(`kernel.metrics._app`, aiohttp: ~0.3 s of `python -X importtime` on this
machine, aiohttp ~0.24 s of it), on a terminal too, where the live line has
the kernels count their records into the metrics blocks (`kernel.metrics`,
which imports the app only when a server is set up: `_server.serve_on_loop`,
`MetricsServerThread`). Checked with `-X importtime` in every process of
the run (the launcher and its kernels), stdout on a pseudo-terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import textwrap

import pytest

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("plain")
flow.from_iterable(range(100)).map(lambda n: n + 1).collect()
"""


def _imported(tmp_path, *args: str) -> tuple[set[str], bytes]:
    """The modules every process of `python -m kernel.run` imported, and
    what it drew on its terminal."""
    path = tmp_path / "pipeline.py"
    path.write_text(textwrap.dedent(PIPELINE))
    terminal, its_end = pty.openpty()
    with open(tmp_path / "stderr", "w+") as stderr:
        try:
            run = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "kernel.run", str(path), *args],
                                   stdout=its_end, stderr=stderr)
            os.close(its_end)
            drawn = b""
            while True:
                try:
                    chunk = os.read(terminal, 4096)
                except OSError:  # (EIO: every writer of the terminal has closed it)
                    break
                if not chunk:
                    break
                drawn += chunk
            assert run.wait(timeout=60) == 0
        finally:
            os.close(terminal)
        stderr.seek(0)
        lines = stderr.read().splitlines()
    return {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}, drawn


@pytest.mark.parametrize("cores", [1, 2])
def test_a_run_without_a_dashboard_imports_no_dashboard_server(tmp_path, cores):
    modules, drawn = _imported(tmp_path, "--cores", str(cores))
    assert b"done in" in drawn  # (the live line's last: the run counted its records)
    assert not {"kernel.metrics._app", "aiohttp", "aiohttp.web"} & modules
    if cores == 1:
        # One kernel: the live line reads the kernel's own counts
        # (Runtime.metrics_snapshot), drawn at its start too, and nothing of
        # kernel.metrics, through which a dashboard's server would come. (The
        # case only checked the modules above before: kernel/metrics/__init__
        # importing _app failed the 2-core case alone, one core never
        # importing kernel.metrics; a one-kernel live line taking the
        # blocks' way passed.)
        assert b"elapsed" in drawn
        assert not {m for m in modules if m.startswith("kernel.metrics")}
    else:  # the kernel processes' counts come through the metrics blocks: kernel.metrics, not its app
        assert "kernel.metrics._block" in modules


def test_a_run_with_a_dashboard_imports_it(tmp_path):
    modules, _ = _imported(tmp_path, "--dashboard", "127.0.0.1:0")
    assert "kernel.metrics._app" in modules and "aiohttp" in modules
