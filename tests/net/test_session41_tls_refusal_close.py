"""Session 41: a cluster run over TLS whose start-up agreement process 0
refused (process 1's state_dir holds another flow's state) ended as it
should, every process saying `error: process 1: state_dir ... holds the
state of another flow`, but beside it processes logged the links' ends as
faults: `link to process 1 closed: code 1006; closing that connection`
(a TLS connection's close, 1006 where a plain one's is 1000; 3 runs of 3,
on process 0 and process 2). The refusal (REFUSE), as an ABORT, ends the
run: how each link then closes is no news, on either end."""

from __future__ import annotations

import os
import subprocess
import sys

from tests._certificates import make_ca, sign
from tests.kernel._ports import free_ports
from tests.kernel._procs import run_logged_processes

PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

OTHER = """\
from kernel import Dataflow

flow = Dataflow("other")
flow.from_iterable(range(100)).key_by(lambda n: n % 3).count().collect()
"""

PIPELINE = """\
from kernel import Dataflow

flow = Dataflow("tls-refused")
flow.from_iterable(range(1000)).key_by(lambda n: n % 3).count().collect()
"""


def test_a_tls_run_whose_agreement_was_refused_logs_only_the_refusal(tmp_path):
    (tmp_path / "other.py").write_text(OTHER)
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    make_ca(tmp_path)
    sign(tmp_path, "node", "127.0.0.1", "extendedKeyUsage=serverAuth,clientAuth\n")
    tls = ["--tls-cert", str(tmp_path / "node.pem"), "--tls-key", str(tmp_path / "node.key"),
           "--tls-ca", str(tmp_path / "ca.pem")]
    env = {**os.environ, "KERNEL_SECRET": "session41-tls-refusal"}
    other = tmp_path / "state1"
    subprocess.run([sys.executable, "-m", "kernel.run", str(tmp_path / "other.py"), "--state-dir",
                    str(other)], check=True, capture_output=True, env=env, timeout=PROMPTLY)
    errors = []
    for run in range(2):  # (1 to 3 such lines a run, without the fix)
        peers = ",".join(f"127.0.0.1:{port}" for port in free_ports(3))
        states = [other if process == 1 else tmp_path / f"run{run}-state{process}" for process in range(3)]
        codes = run_logged_processes(tmp_path, [[str(tmp_path / "pipeline.py"), "--process-id", str(process),
                                                 "--peers", peers, "--state-dir", str(state), *tls]
                                                for process, state in enumerate(states)], env, PROMPTLY)
        assert codes == [1, 1, 1]
        errors += [[line for line in (tmp_path / f"p{process}.err").read_text().splitlines()
                    if "stall" not in line] for process in range(3)]
    refused = (f"error: process 1: state_dir '{other}' holds the state of another flow (its steps differ "
               "from this one's: it was written by the flow 'other', and this one is 'tls-refused'); use a "
               "fresh state_dir for this flow")
    assert errors == [[refused]] * 6, errors
