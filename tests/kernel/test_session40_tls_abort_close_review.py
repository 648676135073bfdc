"""Session 40 review (third round): a cluster run over TLS whose process
failed (a function raising in a kernel) ended as it should, every process
saying "process 2 ... failed: ...", but the others, told so by the failing
process (its ABORT), then logged the link's end as a fault: "link to process
2 closed: code 1006; closing that connection" (a TLS connection's close,
1006 where a plain one's is 1000: 3 runs of 3, 1 to 3 such lines a run;
the "1006 close" a reviewer saw in a 4-process run). A peer that said it
stops has said goodbye: its link's end, however it comes, is no news."""

from __future__ import annotations

import os

import pytest
from _ports import free_ports
from _procs import run_logged_processes, without_stall_reports

from tests._certificates import make_ca, sign

PROMPTLY = 60.0  # seconds: an upper bound, never a synchronisation

pytestmark = pytest.mark.usefixtures("no_leaks")

PIPELINE = """\
from kernel import Dataflow


def boom(item):
    if (item[1] if isinstance(item, tuple) else item) == 150:
        raise ValueError("boom")
    return item


flow = Dataflow("tls-abort")
flow.from_iterable(range(300)).key_by(lambda n: n % 7).map(boom).print()
"""


def test_a_tls_run_a_process_of_which_failed_logs_no_1006_close_of_its_links(tmp_path):
    (tmp_path / "pipeline.py").write_text(PIPELINE)
    make_ca(tmp_path)
    sign(tmp_path, "node", "127.0.0.1", "extendedKeyUsage=serverAuth,clientAuth\n")
    tls = ["--tls-cert", str(tmp_path / "node.pem"), "--tls-key", str(tmp_path / "node.key"),
           "--tls-ca", str(tmp_path / "ca.pem")]
    peers = ",".join(f"127.0.0.1:{port}" for port in free_ports(3))
    env = {**os.environ, "KERNEL_SECRET": "session40-tls-abort"}
    errors = []
    for _ in range(2):  # (a run of 3 processes: 1 to 3 such lines each, without the fix)
        codes = run_logged_processes(tmp_path, [[str(tmp_path / "pipeline.py"), "--process-id", str(process),
                                                 "--peers", peers, *tls]
                                                for process in range(3)], env, PROMPTLY)
        assert codes == [1, 1, 1]
        errors += [without_stall_reports((tmp_path / f"p{process}.err").read_text()) for process in range(3)]
    assert all("ValueError: boom" in e for e in errors), errors
    assert not any("code 1006" in e or "closing that connection" in e for e in errors), errors
