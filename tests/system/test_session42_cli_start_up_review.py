"""Session 42 review: a usage error said after the TLS options were read
(`status --coordinator x --tls-cert C --tls-key K`) still imported the links
(aiohttp, ~0.3 s of CPU), as `_tls` made the links' TLSFiles where it checked
the paths: the start-up the change saved was lost by every TLS deployment's
mistyped command. The TLS files are now made where the command dials."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_session42_cli_start_up import _DRIVER

from tests._certificates import self_signed


def _kernel(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "KERNEL_COORDINATOR"}
    env["KERNEL_SECRET"] = "s"
    return subprocess.run([sys.executable, "-c", _DRIVER, *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=cwd)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    self_signed(directory, "me", "127.0.0.1")
    return ["--tls-cert", str(directory / "me.pem"), "--tls-key", str(directory / "me.key")]


@pytest.mark.parametrize(("args", "said"), [
    (["status", "--coordinator", "x"], "error: --coordinator: 'x' is not host:port"),
    (["kill", "j"], "error: no coordinator given"),
    (["executor", "--cores", "1", "--coordinator", "127.0.0.1:1", "--heartbeat", "0"],
     "error: --heartbeat must be a positive number of seconds"),
    (["coordinator", "--listen", "127.0.0.1:1", "--executor-timeout", "0"],
     "error: --executor-timeout must be a positive number of seconds"),
])
def test_a_usage_error_with_tls_given_does_not_import_the_links(args, said, certificate, tmp_path):
    done = _kernel([*args, *certificate], tmp_path)
    *said_lines, last = done.stderr.splitlines()
    assert said in "\n".join(said_lines)
    assert last == "imported: [] exit: 2", done.stderr


def test_a_command_given_tls_still_dials_with_it(certificate, tmp_path):
    # (nothing listens on port 1: what matters is the scheme the client dialled with)
    done = _kernel(["status", "--coordinator", "127.0.0.1:1", *certificate], tmp_path)
    assert "error: could not reach https://127.0.0.1:1" in done.stderr, done.stderr
    assert done.stderr.splitlines()[-1].endswith("exit: 1"), done.stderr
