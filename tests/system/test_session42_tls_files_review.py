"""Session 42 review: TLS files that ssl cannot load (not PEM, a key that is
not the certificate's) were found only where a command dialled or listened:
`status`/`kill`/`coordinator` ended in an ssl.SSLError's traceback (exit 1),
an `executor` retried "[SSL] PEM lib" every 0.5 s for ever. They are now a
usage error (exit 2), said before anything is dialled or imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests._certificates import self_signed


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    self_signed(directory, "me", "127.0.0.1")
    (directory / "junk.pem").write_text("not a certificate\n")
    return directory


@pytest.mark.parametrize(("command", "tls", "said"), [
    (["status", "--coordinator", "127.0.0.1:1"], ["junk.pem", "junk.pem", None],
     "error: --tls-cert and --tls-key: "),
    (["kill", "j", "--coordinator", "127.0.0.1:1"], ["me.pem", "me.pem", None],  # (cert as key)
     "error: --tls-cert and --tls-key: "),
    (["executor", "--cores", "1", "--coordinator", "127.0.0.1:1"], ["junk.pem", "junk.pem", None],
     "error: --tls-cert and --tls-key: "),
    (["coordinator", "--listen", "127.0.0.1:1"], ["me.pem", "me.key", "junk.pem"], "error: --tls-ca: "),
])
def test_tls_files_ssl_cannot_load_are_a_usage_error(command, tls, said, files, tmp_path):
    cert, key, ca = (None if name is None else str(files / name) for name in tls)
    args = [*command, "--tls-cert", cert, "--tls-key", key, *(["--tls-ca", ca] if ca else [])]
    env = {k: v for k, v in os.environ.items() if k != "KERNEL_COORDINATOR"}
    env["KERNEL_SECRET"] = "s"
    done = subprocess.run([sys.executable, "-m", "kernel", *args], capture_output=True, text=True,
                          timeout=20, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(said) and "cannot be loaded as PEM" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
