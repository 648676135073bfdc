"""Session 40 review: an executor on `--host localhost` prepares a job
process's link port on every address `localhost` resolves to. On a machine
without IPv6 at all (a kernel booted with ipv6.disable=1), whose /etc/hosts
lists `::1 localhost` all the same (Debian's does), creating the IPv6 socket
fails (EAFNOSUPPORT): that error ended the preparation, and every start of a
job of several processes on that executor failed (`prepare`: "[Errno 97]
Address family not supported by protocol"), where it had listened on
127.0.0.1. Now such an address is passed over, as one this machine lacks.

This machine has IPv6, and its /etc/hosts lists localhost as 127.0.0.1 only:
the test resolves and refuses as such a machine does."""

from __future__ import annotations

import errno
import socket

from kernel.system._executor import _listening_sockets


def test_a_port_on_localhost_is_prepared_on_a_machine_without_ipv6(monkeypatch):
    resolve, make = socket.getaddrinfo, socket.socket

    def getaddrinfo(host, port, *args, **kwargs):
        found = resolve(host, port, *args, **kwargs)
        if isinstance(host, str) and host.lower() == "localhost":  # (::1 first: RFC 6724's order)
            found = [entry for entry in resolve("::1", port, *args, **kwargs) if entry not in found] + found
        return found

    class WithoutIPv6(make):
        def __init__(self, family=-1, *args, **kwargs):
            if family == socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
            super().__init__(family, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket, "socket", WithoutIPv6)
    socks = _listening_sockets("localhost")
    monkeypatch.undo()
    try:
        assert [sock.getsockname()[0] for sock in socks] == ["127.0.0.1"]
        with socket.create_connection(("127.0.0.1", socks[0].getsockname()[1]), timeout=5):
            pass  # (listening: the connection waits in its backlog for the process)
    finally:
        for sock in socks:
            sock.close()
