"""Session 41, review: a client command whose stdout the shell closed
(`status >&-`, `logs JOB >&-`) runs, its output going nowhere, as print()
and `run` do.

Python leaves sys.stdout None for a closed descriptor 1; the command's
main() flushed it after the command and ended with an AttributeError's
traceback, exit 1 (every client command; `logs` failed sooner, in its
write). Its standard streams are now opened on /dev/null where closed.

Real processes: a coordinator, the CLI with its stdout closed."""

from __future__ import annotations

import subprocess
import sys

from _system import System


def test_status_with_stdout_closed_exits_0_quietly(tmp_path):
    system = System(tmp_path)
    try:
        system.start_coordinator()
        for command in (["status"], ["status", "--json"]):
            done = subprocess.run([sys.executable, "-m", "kernel", *command], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=system.env, cwd=tmp_path,
                                  timeout=60, preexec_fn=lambda: __import__("os").close(1))
            assert (done.returncode, done.stderr) == (0, ""), command
    finally:
        system.close()
