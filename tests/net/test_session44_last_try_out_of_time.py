"""Session 44: a dial whose last try ran out of time still says that the
server had closed the tries before it.

A TLS port dialled without TLS closes every try before answering, and a
cluster's error says so: "(it closed the connection before answering: TLS
on there and off here, ...?)" (`_relay.py`, from the dial error's
`refused_once`). The tries pause longer after each refusal, so the last
one may start with moments left; under load it ran out of time, and that
error carried no `refused_once`: the hint was lost (CI, once:
test_session35_cluster_links_review's TLS-on-one-process test, "the
connection was never answered (its TCP connect timed out ...)" alone).
Here the server closes the first try before answering and leaves the
second unanswered, so the second runs out of time whatever the load."""

from __future__ import annotations

import socket
import threading

import pytest
from kernel.net._links import LinkError, LinkRefused, connect


def closes_the_first_then_is_silent(listener: socket.socket) -> None:
    """Reads the first try's request and closes it, unanswered; accepts no more
    (the kernel queues the next try's connection, and nobody answers it)."""
    connection, _ = listener.accept()
    with connection:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = connection.recv(4096)
            if not chunk:
                break
            request += chunk


async def test_a_last_try_out_of_time_after_a_closed_one_says_the_server_closed_tries():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        server = threading.Thread(target=closes_the_first_then_is_silent, args=(listener,), daemon=True)
        server.start()
        # (2 s: time for the server's thread to close the first try, under load too)
        with pytest.raises(LinkError) as caught:
            await connect(f"http://127.0.0.1:{port}", b"s" * 32, 1, timeout=2)
        server.join(5)
    error = caught.value
    assert not isinstance(error, LinkRefused)  # (the last try's: out of time, not closed)
    assert str(error).startswith(f"could not reach http://127.0.0.1:{port} within 2 s: "), error
    assert error.refused_once is True, error
