"""The library's threads leave Ctrl-C and SIGTERM to the main thread
(kernel/scheduling/_signal_mask.py): the operating system hands a signal
sent to the process to any thread that does not block it, and one handed
to the watchdog's thread did not interrupt a step blocked in the main
thread (a first Ctrl-C then waited for the step's `time.sleep` to end)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# In a fresh process (no thread of pytest's): while a step runs, every
# thread but the main one must block SIGINT (bit 2) and SIGTERM (bit 15).
THREADS_WHILE_A_STEP_RUNS = """
import os, signal, sys
from kernel import Dataflow, run

def unblocking_threads(record):
    found = []
    for tid in os.listdir("/proc/self/task"):
        if int(tid) == os.getpid():
            continue
        status = open(f"/proc/self/task/{{tid}}/status").read()
        name = open(f"/proc/self/task/{{tid}}/comm").read().strip()
        blocked = int(status.split("SigBlk:")[1].split()[0], 16)
        if not all(blocked >> (s - 1) & 1 for s in (signal.SIGINT, signal.SIGTERM)):
            found.append(name)
    return (len(os.listdir("/proc/self/task")) - 1, found)

flow = Dataflow("threads")
out = flow.from_iterable([1]).map(unblocking_threads).collect()
run(flow, cores={cores}, dashboard="127.0.0.1:0")
print(out.items)
"""


@pytest.mark.parametrize("cores", [1, 2])
def test_no_thread_of_the_librarys_takes_ctrl_c_or_sigterm_from_the_main_thread(cores):
    script = textwrap.dedent(THREADS_WHILE_A_STEP_RUNS.format(cores=cores))
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    [(threads, unblocking)] = eval(done.stdout)
    assert threads >= 1, done.stdout  # (the watchdog's, at least: a thread to check)
    assert unblocking == [], done.stdout
