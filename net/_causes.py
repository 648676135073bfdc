"""What an exception was caused by: the chain of a failed dial, innermost first.

A `connect` that fails wraps aiohttp's error, which wraps the TLS layer's
or the socket's: the one that says what happened. Here so that the links
(`_links.connect`) and the system's dial (`kernel.system._wire`) read the
same chain; the transports import nothing else of the library.
"""

from __future__ import annotations

import ssl


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
