"""Running several `python -m kernel.run` processes of one cluster to their end."""

from __future__ import annotations

import subprocess
import sys


def run_cli_processes(arguments: list[list[str]], envs: list[dict], timeout: float = 60):
    """Start `python -m kernel.run *arguments[k]` with `envs[k]` for each k,
    all at once, and wait for every one; none outlives the call.
    Returns `(return codes, [(stdout, stderr), ...])`."""
    procs = [subprocess.Popen([sys.executable, "-m", "kernel.run", *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for args, env in zip(arguments, envs, strict=True)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], outs
