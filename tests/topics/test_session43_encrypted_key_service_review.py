"""Session 43 review: a service client whose KERNEL_TLS key is encrypted, and
KERNEL_TLS_KEY_PASSPHRASE not set (or wrong), fails with a ServiceError
saying so, as one whose KERNEL_TLS names a file that is not there does.

The connection to the coordinator (`Directory._connect`) made a TopicError
of an OSError only: the key's EncryptedKey (a ValueError) came out of
`kernel.services.call` as itself, past an `except ServiceError`."""

from __future__ import annotations

import pytest
from kernel.net._tls_keys import PASSPHRASE_VARIABLE

from kernel import services
from tests._certificates import make_ca, openssl, sign


@pytest.fixture(scope="module")
def kernel_tls(tmp_path_factory) -> str:
    """KERNEL_TLS naming a certificate and its key, encrypted with "right"."""
    d = tmp_path_factory.mktemp("tls")
    make_ca(d)
    sign(d, "node", "127.0.0.1", "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl(d, "pkey", "-in", "node.key", "-aes256", "-passout", "pass:right", "-out", "encrypted.key")
    return f"{d / 'node.pem'},{d / 'encrypted.key'},{d / 'ca.pem'}"


@pytest.mark.parametrize(("passphrase", "said"), [
    (None, f"is encrypted (a passphrase protects it) and {PASSPHRASE_VARIABLE} is not set"),
    ("wrong", f"is encrypted, and the passphrase in {PASSPHRASE_VARIABLE} does not decrypt it"),
], ids=["no-passphrase", "a-wrong-one"])
def test_a_service_call_with_an_encrypted_key_it_cannot_read_is_a_service_error(
        kernel_tls, monkeypatch, passphrase, said):
    monkeypatch.setenv("KERNEL_SECRET", "s")
    monkeypatch.setenv("KERNEL_TLS", kernel_tls)
    if passphrase is None:
        monkeypatch.delenv(PASSPHRASE_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(PASSPHRASE_VARIABLE, passphrase)
    # (the key is read before any dial: nobody need listen there)
    with pytest.raises(services.ServiceError) as raised:
        services.call("echo", 1, coordinator="127.0.0.1:1", timeout=5)
    assert str(raised.value).startswith(f"KERNEL_TLS={kernel_tls!r}: "), raised.value
    assert said in str(raised.value), raised.value
