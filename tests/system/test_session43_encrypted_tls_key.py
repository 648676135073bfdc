"""Session 43: a TLS key protected by a passphrase. OpenSSL asked for it on
the terminal at every load: the command line's check of the TLS files (a
usage error where they do not load), then each context made (a command's
dial, a coordinator's server and client contexts, every dial of an executor
retrying, every topic connection), and a process without a terminal (a job
process its executor started) failed, as did the check: `cannot be loaded
as PEM (Invalid argument)`. It is never asked for now: an encrypted key's
passphrase is KERNEL_TLS_KEY_PASSPHRASE's, which every process given the key
reads (a job's processes inherit their executor's environment); without it,
or with a wrong one, the key is a usage error (exit 2) saying so.

The commands run on a terminal of their own (a pty, their controlling
terminal: where OpenSSL's prompt goes); a prompt there fails the test at once."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time

import pytest
from _system import System
from kernel.net._tls_keys import PASSPHRASE_VARIABLE

from tests._certificates import make_ca, openssl, sign

PASSPHRASE = "correct horse"
PROMPT = b"pass phrase"  # (OpenSSL's: "Enter PEM pass phrase:")


@pytest.fixture(scope="module")
def certificates(tmp_path_factory) -> dict[str, str]:
    """A CA, a certificate it signs for 127.0.0.1, and its key encrypted with PASSPHRASE."""
    d = tmp_path_factory.mktemp("tls")
    make_ca(d)
    sign(d, "node", "127.0.0.1", "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl(d, "pkey", "-in", "node.key", "-aes256", "-passout", f"pass:{PASSPHRASE}",
            "-out", "encrypted.key")
    assert (d / "encrypted.key").read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    return {name: str(d / name) for name in ("ca.pem", "node.pem", "encrypted.key")}


def on_a_terminal(args: list[str], env: dict[str, str], within: float = 20.0) -> tuple[int, str]:
    """`python -m kernel ARGS` run on a pty of its own: its exit status and
    what it wrote there, failing at once where it asks for a passphrase."""
    pid, terminal = pty.fork()
    if pid == 0:  # (the child: the pty is its controlling terminal, stdin, stdout and stderr)
        try:
            os.execve(sys.executable, [sys.executable, "-m", "kernel", *args], env)
        finally:
            os._exit(127)
    drawn = b""
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not select.select([terminal], [], [], 0.05)[0]:
                continue
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # (EIO: the command has ended, and the terminal with it)
                break
            if not chunk:
                break
            drawn += chunk
            assert PROMPT not in drawn, f"asked for the key's passphrase on the terminal: {drawn!r}"
        else:  # (else waitpid below waited for it, however long: `within` bounded nothing)
            raise AssertionError(f"still running after {within:g} s: {drawn!r}")
        _, status = os.waitpid(pid, 0)
        pid = 0
        return os.waitstatus_to_exitcode(status), drawn.decode(errors="replace")
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(terminal)


@pytest.mark.parametrize(("passphrase", "said"), [
    (None, f"is encrypted (a passphrase protects it) and {PASSPHRASE_VARIABLE} is not set: set it to the "
           "key's passphrase"),
    ("wrong", f"is encrypted, and the passphrase in {PASSPHRASE_VARIABLE} does not decrypt it"),
], ids=["no-passphrase", "a-wrong-one"])
def test_an_encrypted_key_without_its_passphrase_is_a_usage_error_never_a_prompt(
        certificates, passphrase, said):
    env = {k: v for k, v in os.environ.items() if k not in ("KERNEL_COORDINATOR", PASSPHRASE_VARIABLE)}
    env["KERNEL_SECRET"] = "s"
    if passphrase is not None:
        env[PASSPHRASE_VARIABLE] = passphrase
    code, drawn = on_a_terminal(["status", "--coordinator", "127.0.0.1:1", "--tls-cert",
                                 certificates["node.pem"], "--tls-key", certificates["encrypted.key"]], env)
    assert code == 2, drawn
    assert drawn.startswith(f"error: --tls-key: {certificates['encrypted.key']} {said}"), drawn


def test_a_system_given_the_passphrase_runs_a_job_of_two_processes_over_tls(
        certificates, tmp_path, monkeypatch):
    """The coordinator, two executors, their job's processes (their links'
    contexts, made from the files their executor hands on) and the commands:
    each loads the encrypted key with the passphrase, none asks for it."""
    monkeypatch.setenv(PASSPHRASE_VARIABLE, PASSPHRASE)  # (this process's status() loads the key too)
    options = ["--tls-cert", certificates["node.pem"], "--tls-key", certificates["encrypted.key"],
               "--tls-ca", certificates["ca.pem"]]
    system = System(tmp_path, options=options)
    try:
        system.start_coordinator()
        system.start_executor(cores=1), system.start_executor(cores=1)
        system.executors_up(2)
        pipeline = tmp_path / "p.py"
        pipeline.write_text("from kernel import Dataflow\n\nflow = Dataflow('p')\n"
                            "flow.from_iterable(range(100)).key_by(lambda n: n % 3).count().print('c ')\n")
        code, drawn = on_a_terminal(["submit", str(pipeline), "--processes", "2", "--wait", *options],
                                    system.env, within=60.0)
        assert code == 0, drawn
        job = drawn.splitlines()[0].strip()
        printed = sorted(line.split("] ", 1)[1] for line in system.cli("logs", job).stdout.splitlines()
                         if "] c " in line)
        assert printed == ["c (0, 34)", "c (1, 33)", "c (2, 33)"], printed
        logs = [system.coordinator_log, *tmp_path.glob("executor*.log"),
                *tmp_path.glob("executor*/logs/*.log")]
        assert not [log for log in logs if PROMPT in log.read_bytes()]
    finally:
        system.close()
