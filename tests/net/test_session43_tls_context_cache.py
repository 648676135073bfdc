"""Session 43: a process makes its TLS contexts once for the same files.
`TLSFiles.client_context()` and `server_context()` read the certificate,
the key and the CA again at every call: every dial of a link, of an
executor retrying its coordinator, of each topic connection (~1 ms with a
CA; ~85 ms without one, the system's CAs loaded each time). Now kept per
process under the files' (path, mtime_ns, size, inode): a certificate
rotated, rewritten in place or a new file renamed over it, is the one
presented at the next dial (checked over a real TLS connection: the
server reads the client certificate it was shown)."""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import time

import pytest
from kernel.net._relay import TLSFiles

from tests._certificates import make_ca, sign


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA; the server's certificate for 127.0.0.1; two client certificates
    (CN 127.0.0.2 and 127.0.0.3) to rotate between."""
    d = tmp_path_factory.mktemp("tls")
    make_ca(d)
    for name, address in (("server", "127.0.0.1"), ("first", "127.0.0.2"), ("second", "127.0.0.3")):
        sign(d, name, address, "extendedKeyUsage=serverAuth,clientAuth\n")
    # Aged as files deployed before the process: the CA (and the server's files) are
    # read in every context, and a file written under a second ago is never kept
    # (net/_tls_contexts.py): on a quiet machine these were made within that second,
    # and every context was made afresh (the suite's run failed the sameness checks)
    for path in d.iterdir():
        os.utime(path, (time.time() - 60, time.time() - 60))
    return d


def _install(certificates, tmp_path, name: str, *, in_place: bool = False, aged: bool = False) -> None:
    """The client's files (client.pem, client.key in tmp_path) become `name`'s:
    rewritten in place (same inode), or new files renamed over them; `aged`:
    last written a minute ago, as files deployed before the process started
    (a context is kept only for files that settled: net/_tls_contexts.py)."""
    for suffix in ("pem", "key"):
        target = tmp_path / f"client.{suffix}"
        if in_place:
            target.write_bytes((certificates / f"{name}.{suffix}").read_bytes())
        else:
            shutil.copy(certificates / f"{name}.{suffix}", tmp_path / f"new.{suffix}")
            os.replace(tmp_path / f"new.{suffix}", target)
        if aged:
            os.utime(target, (time.time() - 60, time.time() - 60))


async def _presented(client: TLSFiles, server: TLSFiles) -> str:
    """The common name of the client certificate a TLS server (asking for
    one, signed by the CA) was shown on one connection of `client`'s."""
    shown: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handle(reader, writer):
        subject = dict(pair[0] for pair in writer.get_extra_info("peercert")["subject"])
        shown.set_result(subject["commonName"])
        writer.close()

    listening = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server.server_context())
    try:
        port = listening.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client.client_context())
        try:
            return await asyncio.wait_for(shown, 10)
        finally:
            writer.close()
    finally:
        listening.close()


def test_the_same_files_give_the_same_contexts(certificates, tmp_path):
    _install(certificates, tmp_path, "first", aged=True)
    files = TLSFiles(str(tmp_path / "client.pem"), str(tmp_path / "client.key"), str(certificates / "ca.pem"))
    again = TLSFiles(files.cert, files.key, files.ca)  # (the topics make a TLSFiles at each connection)
    assert files.client_context() is again.client_context()
    assert files.server_context() is again.server_context()
    assert files.server_context() is not files.client_context()
    assert isinstance(files.client_context(), ssl.SSLContext)


@pytest.mark.parametrize("in_place", [False, True], ids=["renamed-over", "rewritten-in-place"])
async def test_a_rotated_certificate_is_presented_at_the_next_dial(certificates, tmp_path, in_place):
    server = TLSFiles(str(certificates / "server.pem"), str(certificates / "server.key"),
                      str(certificates / "ca.pem"))
    _install(certificates, tmp_path, "first", aged=True)
    client = TLSFiles(str(tmp_path / "client.pem"), str(tmp_path / "client.key"),
                      str(certificates / "ca.pem"))
    assert await _presented(client, server) == "127.0.0.2"
    kept = client.client_context()
    assert await _presented(client, server) == "127.0.0.2" and client.client_context() is kept
    _install(certificates, tmp_path, "second", in_place=in_place)
    assert await _presented(client, server) == "127.0.0.3"
    assert client.client_context() is not kept


def test_files_written_this_moment_are_read_at_each_use(certificates, tmp_path):
    # rewritten in place to the same size within the clock's tick, a file keeps
    # its stamp: one that just changed is not trusted to have settled yet
    _install(certificates, tmp_path, "first")
    files = TLSFiles(str(tmp_path / "client.pem"), str(tmp_path / "client.key"), str(certificates / "ca.pem"))
    assert files.client_context() is not files.client_context()
