"""A certificate and its private key loaded into an ssl context, an
encrypted key's passphrase read from KERNEL_TLS_KEY_PASSPHRASE, never asked
for. OpenSSL asked for it on the terminal at every load: the command line's
check of the files, then each context made (a command's dial, a
coordinator's server and client, every dial of an executor retrying, every
topic connection), and a process without a terminal (a job process its
executor started, an executor under a supervisor) failed ("PEM lib", said
as "cannot be loaded as PEM (Invalid argument)"). Apart from the links
(aiohttp): the command line checks the files with it."""

from __future__ import annotations

import os
import ssl

PASSPHRASE_VARIABLE = "KERNEL_TLS_KEY_PASSPHRASE"
# bytes of a passphrase OpenSSL reads at most (PEM_BUFSIZE): ssl refuses a
# longer one with a bare ValueError before trying it
PASSPHRASE_MOST = 1024


class EncryptedKey(ValueError):
    """The key is encrypted, and PASSPHRASE_VARIABLE is not set, or does not decrypt it."""


def load_key_pair(context: ssl.SSLContext, cert: str, key: str) -> None:
    """`context.load_cert_chain(cert, key)`, an encrypted key decrypted with
    PASSPHRASE_VARIABLE's passphrase (EncryptedKey where it is not set or
    wrong); a key without a passphrase loads as it did, the variable unread."""
    asked = False

    def passphrase() -> bytes:
        nonlocal asked
        asked = True
        given = os.environ.get(PASSPHRASE_VARIABLE)
        if given is None:
            raise EncryptedKey(
                f"{key} is encrypted (a passphrase protects it) and {PASSPHRASE_VARIABLE} is not set: set "
                "it to the key's passphrase where each process given this key starts (a job's processes "
                "read their executor's), or give a key without one (openssl pkey -in KEY -out PLAIN_KEY); "
                "it is never asked for on the terminal")
        # The variable's bytes as they are (what openssl's -passout pass: was
        # given): handed back as text, ssl encoded it as UTF-8, and a
        # passphrase that is not (café typed on a Latin-1 terminal) was a
        # UnicodeEncodeError's traceback, the right passphrase or not
        given = os.fsencode(given)
        if len(given) > PASSPHRASE_MOST:  # (else ssl's ValueError, a traceback naming no variable)
            raise EncryptedKey(f"{key} is encrypted, and the passphrase in {PASSPHRASE_VARIABLE} is "
                               f"{len(given)} bytes long: OpenSSL takes {PASSPHRASE_MOST} at most")
        return given

    try:
        context.load_cert_chain(cert, key, password=passphrase)
    except ssl.SSLError as exc:
        # (decrypted, a key that is not the certificate's says so itself)
        if asked and exc.reason != "KEY_VALUES_MISMATCH":
            raise EncryptedKey(f"{key} is encrypted, and the passphrase in {PASSPHRASE_VARIABLE} does not "
                               "decrypt it") from None
        raise
