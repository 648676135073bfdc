"""Session 42: the system's commands check their command line before they
import what they would run with. A usage error or `--help` of `python -m
kernel status|logs|kill|submit|executor|coordinator` imported aiohttp (the
links, the client) and asyncio before it said anything: ~0.4 s of CPU
against Python's ~0.03 s, paid on every mistyped command and by every test
that starts one. Each case runs `python -m kernel` (runpy, as `-m` does) in
a process that then says which heavy modules it had imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

HEAVY = ("aiohttp", "asyncio", "kernel.net._links", "kernel.dataflow._api")
# `python -m kernel ARGS`, then the heavy modules it imported, as the last line of stderr
_DRIVER = f"""
import runpy, sys
sys.argv[0] = "kernel"
try:
    runpy.run_module("kernel", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
sys.stdout.flush()
print("imported:", [m for m in {HEAVY!r} if m in sys.modules], "exit:", code, file=sys.stderr)
"""


@pytest.mark.parametrize(("args", "code", "said"), [
    (["status", "--coordinator", " "], 2, "error: --coordinator: the address given is blank"),
    (["status"], 2, "error: no coordinator given: set KERNEL_COORDINATOR"),
    (["logs", "j", "--coordinator", "nohost"], 2, "error: --coordinator: 'nohost' is not host:port"),
    (["kill"], 2, "the following arguments are required: job"),
    (["submit", "--cores", "0", "p.py"], 2, "argument --cores: must be an integer >= 1"),
    (["executor", "--cores", "1"], 2, "error: no coordinator given"),
    (["coordinator", "--listen", "x"], 2, "error: --listen: 'x' is not host:port"),
    (["coordinator", "--listen", "127.0.0.1:1", "--executor-timeout", "0"], 2,
     "error: --executor-timeout must be a positive number of seconds"),
    (["--help"], 0, ""),
    (["status", "--help"], 0, ""),
    (["submit", "--help"], 0, ""),
    (["executor", "--help"], 0, ""),
])
def test_a_usage_error_or_help_imports_neither_the_links_nor_the_event_loop(args, code, said):
    env = {k: v for k, v in os.environ.items() if k != "KERNEL_COORDINATOR"}
    env["KERNEL_SECRET"] = "s"
    done = subprocess.run([sys.executable, "-c", _DRIVER, *args], capture_output=True, text=True,
                          timeout=60, env=env)
    *said_lines, last = done.stderr.splitlines()
    assert said in "\n".join(said_lines)
    assert last == f"imported: [] exit: {code}", done.stderr
