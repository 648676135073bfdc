"""Session 43: `python -m kernel.run --log-format json`'s last word on a
failed step carries `kernel` and `step` as fields (session 42). In a
cluster, a process that hears of a peer's failure ends with the peer's
error (`net.PeerFailed`: `process 1 (H:P) failed: kernel 1 failed: ...`),
and that line had neither field: with `--cores 1` the failed kernel is
always another process's, so process 0, the one that collects the
results, never named it as a field. The failing process now tells its
peers the kernel and the step with its error (ABORT), and their last
word carries them.

Two real cluster processes on loopback, one core each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from _ports import free_ports

from tests.kernel.test_session42_json_error_fields import FAILING, REPO


def cluster_last_words(tmp_path, pipeline: str) -> list[dict]:
    """The last JSON line on stderr of each of two cluster processes that
    ran `pipeline` with --log-format json, one core each (each exited 1)."""
    (tmp_path / "pipeline.py").write_text(pipeline)
    peers = ",".join(f"127.0.0.1:{port}" for port in free_ports(2))
    env = dict(os.environ, KERNEL_SECRET="json-fields-secret")
    command = [sys.executable, "-m", "kernel.run", str(tmp_path / "pipeline.py"), "--quiet",
               "--log-format", "json", "--cores", "1", "--peers", peers]
    procs = [subprocess.Popen([*command, "--process-id", str(i)], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    try:
        errors = [proc.communicate(timeout=60)[1] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    assert [proc.returncode for proc in procs] == [1, 1], errors
    return [json.loads(error.splitlines()[-1]) for error in errors]


def test_a_peers_failure_names_its_kernel_and_step_as_fields(tmp_path):
    # (record 3, the failing one, is kernel 1's)
    heard, own = cluster_last_words(tmp_path, FAILING)
    # process 1's own failure, as on one process
    assert (own["kernel"], own["step"]) == (1, "map(parse) (step 1)"), own
    # process 0's: its peer's, named as such, with the same fields
    assert heard["message"].startswith("process 1 (127.0.0.1:"), heard
    assert "kernel 1 failed: OperatorError: operator 'map(parse) (step 1)'" in heard["message"], heard
    assert (heard["kernel"], heard["step"]) == (1, "map(parse) (step 1)"), heard
