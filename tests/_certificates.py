"""Certificates for the TLS tests, made with openssl as a user would.

A CA and certificates it signs carry what Python 3.13's default
verification requires (`ssl.VERIFY_X509_STRICT`, on in
`ssl.create_default_context()` from 3.13): the CA's key usage
(`keyCertSign`), and an authority key identifier on what it signs.
Without them every TLS link failed there with "CA cert does not include
key usage extension"; 3.11 and 3.12 accepted them."""

from __future__ import annotations

import subprocess
from pathlib import Path

_CA_USAGE = "keyUsage=critical,keyCertSign,cRLSign"
_SIGNED = "authorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n"


def openssl(directory: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def make_ca(directory: Path) -> None:
    """ca.pem and ca.key: a CA for the certificates `sign` makes."""
    openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", _CA_USAGE,
            "-keyout", "ca.key", "-out", "ca.pem")


def sign(directory: Path, name: str, address: str, extensions: str = "") -> None:
    """NAME.pem and NAME.key: a certificate the CA signs for IP `address`."""
    openssl(directory, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={address}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
    Path(directory, f"{name}.cnf").write_text(f"subjectAltName=IP:{address}\n{_SIGNED}{extensions}")
    openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.cnf", "-out", f"{name}.pem")


def self_signed(directory: Path, name: str, address: str) -> None:
    """NAME.pem and NAME.key: a certificate for IP `address` that no CA signed."""
    openssl(directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={address}", "-addext", f"subjectAltName=IP:{address}",
            "-keyout", f"{name}.key", "-out", f"{name}.pem")


def node_tls_options(directory: Path) -> list[str]:
    """The --tls-* options of processes that all serve and dial on
    127.0.0.1 with one certificate (node.pem, node.key, for both ends),
    signed by a CA made in `directory` (ca.pem)."""
    make_ca(directory)
    sign(directory, "node", "127.0.0.1", "extendedKeyUsage=serverAuth,clientAuth\n")
    return ["--tls-cert", str(directory / "node.pem"), "--tls-key", str(directory / "node.key"),
            "--tls-ca", str(directory / "ca.pem")]
