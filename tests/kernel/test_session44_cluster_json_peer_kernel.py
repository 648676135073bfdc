"""Session 44: `python -m kernel.run --log-format json` in a cluster. A
process ended by a peer's failure carried the failed kernel and step as
fields (session 43), but one whose peer was lost (killed) or never came
(its pipeline file raised at import) had no `kernel` field, though the
peer's kernel is known: with one core a process, process N runs kernel N.

Two real cluster processes on loopback, one core each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from _ports import free_ports

from tests.kernel.test_session42_json_error_fields import REPO

# (process 1 marks that it works, so the test kills it while the run goes on)
WORKING = """\
import os, sys, time
from kernel import Dataflow

def slow(n):
    if os.environ.get("KERNEL_PROCESS_ID") == "1" and not os.path.exists({mark!r}):
        open({mark!r}, "w").close()
    time.sleep(0.01)
    return n

flow = Dataflow("working")
flow.from_iterable(range(10**9), batch_size=10).key_by(lambda n: n % 16).map_values(slow).sink(id)
"""

# (process 1's import raises: it never links to process 0)
BROKEN_IN_ONE = """\
import os
from kernel import Dataflow

if os.environ.get("KERNEL_PROCESS_ID") == "1":
    raise RuntimeError("no such table")
flow = Dataflow("broken")
flow.from_iterable(range(10)).collect()
"""


def _cluster(tmp_path, text: str, *options: str) -> list[subprocess.Popen]:
    (tmp_path / "pipeline.py").write_text(text)
    peers = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    command = [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--quiet",
               "--log-format", "json", "--cores", "1", "--peers", peers, *options]
    return [subprocess.Popen([*command, "--process-id", str(i)], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, KERNEL_SECRET="json-fields-secret",
                                      KERNEL_PROCESS_ID=str(i)))
            for i in (0, 1)]


def _last_words(procs: list[subprocess.Popen]) -> list[dict]:
    try:
        errors = [proc.communicate(timeout=60)[1] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    return [json.loads(error.splitlines()[-1]) if error.strip() else None for error in errors]


def test_a_lost_peer_names_its_kernel_as_a_field(tmp_path):
    mark = tmp_path / "working"
    procs = _cluster(tmp_path, WORKING.format(mark=str(mark)))
    try:
        deadline = time.monotonic() + 30
        while not mark.exists():  # (polled: the mark is the process's own word that it works)
            assert procs[1].poll() is None and procs[0].poll() is None, "a process ended before it worked"
            assert time.monotonic() < deadline, "process 1 did not work within 30 s"
            time.sleep(0.02)
        procs[1].kill()
    finally:
        words = _last_words(procs)
    heard = words[0]
    assert heard["message"].startswith("lost process 1 (127.0.0.1:"), heard
    assert heard["kernel"] == 1 and "step" not in heard, heard


def test_a_peer_that_never_came_names_its_kernel_as_a_field(tmp_path):
    procs = _cluster(tmp_path, BROKEN_IN_ONE, "--startup-timeout", "2")
    heard, own = _last_words(procs)
    assert own["message"].startswith("importing "), own
    assert heard["message"].startswith("process 1 (127.0.0.1:"), heard
    assert heard["message"].endswith("did not connect within 2 s"), heard
    assert heard["kernel"] == 1 and "step" not in heard, heard
