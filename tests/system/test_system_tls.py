"""The system over TLS (`--tls-cert`, `--tls-key`, `--tls-ca` on every
process, the links' options): a job completes; a client without TLS, or
with a certificate the CA did not sign, is refused."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _system import System


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, str]:
    """A CA and a certificate it signs for 127.0.0.1, and one it did not sign (openssl)."""
    d = tmp_path_factory.mktemp("tls")

    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
            "-keyout", "node.key", "-out", "node.csr")
    Path(d, "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", "node.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "ext.cnf", "-out", "node.pem")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "other.key", "-out", "other.pem")
    return {name: str(d / name) for name in ("ca.pem", "node.pem", "node.key", "other.pem", "other.key")}


def test_a_system_over_tls_runs_a_job_and_refuses_clients_without_it(certificates, tmp_path):
    tls = ["--tls-cert", certificates["node.pem"], "--tls-key", certificates["node.key"],
           "--tls-ca", certificates["ca.pem"]]
    system = System(tmp_path, options=tls)
    try:
        system.start_coordinator()
        system.start_executor(cores=1)
        system.executors_up(1)
        pipeline = tmp_path / "p.py"
        pipeline.write_text("from kernel import Dataflow\nflow = Dataflow('p')\n"
                            "flow.from_iterable(range(100)).map(lambda n: n * 2).print('n ')\n")
        done = system.cli("submit", pipeline, "--wait")
        assert done.returncode == 0, done.stderr
        job = done.stdout.splitlines()[0]
        printed = [line for line in system.cli("logs", job).stdout.splitlines() if line.startswith("n ")]
        assert sorted(printed) == sorted(f"n {2 * n}" for n in range(100))
        unsigned = ["--tls-cert", certificates["other.pem"], "--tls-key", certificates["other.key"],
                    "--tls-ca", certificates["ca.pem"]]
        # (both at once: each client retries for its 2 s before it gives up)
        with ThreadPoolExecutor(2) as both:
            plain, stranger = both.map(lambda options: system.cli("status", options=options), [[], unsigned])
        assert plain.returncode == 1 and "error:" in plain.stderr
        assert stranger.returncode == 1 and "error:" in stranger.stderr
        assert system.coordinator.poll() is None and system.cli("status").returncode == 0
    finally:
        system.close()
