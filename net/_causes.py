"""What an exception was caused by: the chain of a failed dial, innermost first.

A `connect` that fails wraps aiohttp's error, which wraps the TLS layer's
or the socket's: the one that says what happened. Here so that the links
(`_links.connect`) and the system's dial (`kernel.system._wire`) read the
same chain; the transports import nothing else of the library.
"""

from __future__ import annotations

import ssl

import aiohttp


def causes(exc: BaseException) -> list[BaseException]:
    """What caused `exc`, innermost first, and `exc` last (aiohttp's own
    errors are ssl errors too, their text the whole connection's)."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain[::-1]


def untrusted_certificate(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The verification error, when a dial failed because the other side's
    certificate does not verify (signed by a CA we were not given, issued
    for another name or address, expired): a configuration error, which no
    retry mends."""
    return next((e for e in causes(exc) if isinstance(e, ssl.SSLCertVerificationError)), None)


def refused_by_server(exc: BaseException) -> bool:
    """Whether a dial failed because the server was there and closed or
    reset the connection before it authenticated us: over its limit of
    pending connections, refusing our TLS certificate (TLS tells the
    client no more than a reset or a close), its time limit. Not nobody
    listening, no route, no answer (a server restarting, a network down):
    those say nothing of the server's load, and are retried sooner."""
    chain = causes(exc)
    if any(isinstance(c, (ConnectionRefusedError, TimeoutError)) for c in chain):
        return False
    return any(isinstance(c, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError, ssl.SSLError,
                              aiohttp.ServerDisconnectedError)) for c in chain)


def dial_failure_said(exc: BaseException) -> str:
    """A failed dial's words: aiohttp's, but for a TLS dial's. aiohttp names
    the `ssl=` it was given, and for an SSLContext that is its repr: `Cannot
    connect to host 10.0.0.1:7000 ssl:<ssl.SSLContext object at
    0x7f3320582f90> [Connect call failed ...]`. Said `over TLS` instead.
    (A plain dial's `ssl:default` is aiohttp's own, left as it is.)"""
    said = str(exc)
    if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.ssl, ssl.SSLContext):
        said = said.replace(f" ssl:{exc.ssl}", " over TLS")
    return said
