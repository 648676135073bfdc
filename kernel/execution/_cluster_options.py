"""The peers and the shared secret a user typed, read and checked
(`parse_peers`, `read_secret`; `kernel.execution._cluster` holds the rest).

Apart from `_cluster`, which imports the links (aiohttp, ~0.2 s of
start-up): `python -m kernel status` and the other commands read their
--coordinator and secret with these before they know they will dial
anything, and a usage error is said at Python's own start-up cost.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

SECRET_VARIABLE = "KERNEL_SECRET"


def parse_peers(peers) -> list[tuple[str, int]]:
    """`"h0:p0,h1:p1"` or a sequence of `"host:port"` / `(host, port)` ->
    [(host, port)]; IPv6 hosts in brackets (`[::1]:7000`)."""
    # peers=5 failed as "'int' object is not iterable"; a set's order (the process ids) is its
    # strings' hashes', which differ from process to process. Any other iterable is in order.
    if not isinstance(peers, (str, Iterable)) or isinstance(peers, (AbstractSet, Mapping)):
        raise ValueError("peers must be 'host:port,host:port...' or a list of 'host:port' (or (host, port)), "
                         f"got {peers!r}")
    items = [p.strip() for p in peers.split(",")] if isinstance(peers, str) else list(peers)
    addresses = []
    for n, item in enumerate(items, 1):
        if item == "":  # (said as the place it has in the list: "peers: '' is not host:port" named none)
            raise ValueError(f"peers: address {n} of {len(items)} is empty ({peers!r})")
        if isinstance(item, tuple) and len(item) == 2:
            host, port = item
        elif isinstance(item, str) and ":" in item:
            host, _, port = item.rpartition(":")
            host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        else:
            raise ValueError(f"peers: {item!r} is not host:port")
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ValueError(f"peers: {item!r} has no port number") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"peers: {item!r} is not host:port with a port from 1 to 65535")
        addresses.append((str(host), port))
    if not addresses:
        raise ValueError("peers: no addresses given")
    if len(set(addresses)) != len(addresses):
        raise ValueError("peers: an address is listed twice")
    return addresses


def read_secret(secret=None, secret_file=None) -> bytes:
    """The shared secret: given, read from `secret_file`, or from the
    environment variable KERNEL_SECRET, in that order."""
    if secret is None and secret_file is not None:
        try:
            with open(secret_file, "rb") as f:
                secret = f.read().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the secret file {secret_file}: {exc.strerror}") from None
    if secret is None:
        secret = os.environ.get(SECRET_VARIABLE)
    if not isinstance(secret, (str, bytes, bytearray, type(None))):
        # bytes(5) is five zero bytes: secret=5 was a secret anyone could guess
        # (its value is not shown: it may be a real secret of the wrong type)
        raise ValueError(f"secret must be a str or bytes, not {type(secret).__name__}")
    if not secret:
        raise ValueError(f"a cluster needs a shared secret: set {SECRET_VARIABLE} or use --secret-file")
    return secret.encode() if isinstance(secret, str) else bytes(secret)
