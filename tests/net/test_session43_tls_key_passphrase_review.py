"""Session 43 review: KERNEL_TLS_KEY_PASSPHRASE as the environment holds it.

`load_key_pair` handed the variable's text to ssl, which encoded it as
UTF-8: a passphrase that is not (café typed on a Latin-1 terminal, given to
`openssl ... -passout pass:` as it was typed) was a UnicodeEncodeError's
traceback from every command, the right passphrase or not, and the key
could not be used at all. A passphrase longer than OpenSSL reads (1024
bytes) was ssl's bare ValueError, a traceback naming no variable. Now the
variable's bytes are the passphrase, and one too long is a usage error
(exit 2) saying so. Real commands (`python -m kernel status`), a key
encrypted by openssl."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from kernel.net._tls_keys import PASSPHRASE_MOST, PASSPHRASE_VARIABLE

from tests._certificates import make_ca, openssl, sign

LATIN_1 = b"caf\xe9"  # (not UTF-8)


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A certificate for 127.0.0.1 and its key, encrypted with LATIN_1."""
    d = tmp_path_factory.mktemp("tls")
    make_ca(d)
    sign(d, "node", "127.0.0.1", "extendedKeyUsage=serverAuth,clientAuth\n")
    subprocess.run([b"openssl", b"pkey", b"-in", b"node.key", b"-aes256", b"-passout", b"pass:" + LATIN_1,
                    b"-out", b"latin.key"], cwd=d, check=True, capture_output=True)
    openssl(d, "pkey", "-in", "node.key", "-aes256", "-passout", "pass:x", "-out", "x.key")
    return d


def status(tls, key: str, passphrase: bytes) -> subprocess.CompletedProcess:
    """`kernel status` given the encrypted `key`, its passphrase variable
    `passphrase` (bytes, as the environment holds it), no coordinator there."""
    variable = PASSPHRASE_VARIABLE.encode()
    env = {k: v for k, v in os.environb.items() if k not in (b"KERNEL_COORDINATOR", variable)}
    env.update({b"KERNEL_SECRET": b"s", variable: passphrase})
    return subprocess.run([sys.executable, "-m", "kernel", "status", "--coordinator", "127.0.0.1:1",
                           "--tls-cert", str(tls / "node.pem"), "--tls-key", str(tls / key)],
                          env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)


def test_a_passphrase_that_is_not_utf8_decrypts_its_key(tls):
    done = status(tls, "latin.key", LATIN_1)
    # (the files loaded: the command went on to dial, and found nobody)
    assert done.returncode == 1 and done.stderr.startswith("error: could not reach"), done.stderr
    wrong = status(tls, "latin.key", b"caf\xe8")
    assert wrong.returncode == 2, wrong.stderr
    assert wrong.stderr.startswith(f"error: --tls-key: {tls / 'latin.key'} is encrypted, and the passphrase "
                                   f"in {PASSPHRASE_VARIABLE} does not decrypt it"), wrong.stderr


def test_a_passphrase_longer_than_openssl_reads_is_a_usage_error(tls):
    done = status(tls, "x.key", b"x" * (PASSPHRASE_MOST + 1))
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"error: --tls-key: {tls / 'x.key'} is encrypted, and the passphrase in "
                           f"{PASSPHRASE_VARIABLE} is {PASSPHRASE_MOST + 1} bytes long: OpenSSL takes "
                           f"{PASSPHRASE_MOST} at most\n"), done.stderr
